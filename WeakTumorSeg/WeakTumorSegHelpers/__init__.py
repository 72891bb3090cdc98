"""Helpers of the WeakTumorSeg Slicer module (``WeakTumorSeg.py`` keeps the classes of Slicer's
scripted-module template: Module, parameter node, Widget, Logic and Test).

- :mod:`.slicerbase`: Slicer's scripted-module base classes, or stand-ins where its GUI is absent;
- :mod:`.core`: finds the core library ``WeakTumorSegLib`` and imports its torch-free part (bundle
  information and the default-bundle rule, inference settings, output names), once;
- :mod:`.job`: the background ``segment`` process, its progress and how to stop it;
- :mod:`.run`: one run on volume nodes, from writing the inputs to the result nodes;
- :mod:`.nodes`: how the module marks, finds, writes and reads its nodes;
- :mod:`.review`: the slice review table and the export manifest;
- :mod:`.views`: slice views on one axial slice of a volume;
- :mod:`.export`: the mask, segmentation and manifest written for training;
- :mod:`.devices`: which PyTorch and GPUs the core's interpreter sees, and the device menu;
- :mod:`.installer`: installing PyTorch and ``Resources/requirements.txt`` into Slicer's Python;
- :mod:`.improve`: the background ``train --from-bundle`` process and the Improve the model section;
- :mod:`.inputspanel`, :mod:`.reviewpanel`: the Inputs and the Review / Correct / Export sections of the GUI.

The installer, the panels and the device menu are the GUI's; everything the Logic uses runs with MRML,
VTK and the standard library alone. Nothing here is named ``WeakTumorSegLib`` (that would shadow the core).
"""
