"""Tier C: static checks of the Slicer extension (no Slicer, no Qt needed).

Every ``self.ui.<name>`` the Widget uses exists in the ``.ui`` file; every widget bound to the parameter
node names a field of it with a matching widget type; the CMake files list what the module installs and
carry the extension metadata; the requirements file follows ``pyproject.toml``.
"""

from __future__ import annotations

import ast
import re
import struct
import tomllib
import xml.etree.ElementTree as ET

import pytest

from conftest import REPO_ROOT

MODULE_DIR = REPO_ROOT / "WeakTumorSeg"
MODULE_PY = MODULE_DIR / "WeakTumorSeg.py"
#: The module's helper package (GUI panels among them), beside WeakTumorSeg.py.
HELPERS_DIR = MODULE_DIR / "WeakTumorSegHelpers"
CORE_DIR = REPO_ROOT / "WeakTumorSegLib"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "WeakTumorSeg.ui"

#: Widget classes the parameter node wrapper can bind to a field type (slicer.parameterNodeWrapper.guiConnectors).
CONNECTABLE = {
    "node": {"qMRMLNodeComboBox"},
    "Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "bool": {"QCheckBox", "ctkCheckBox", "QPushButton"},
    "float": {"ctkSliderWidget", "QDoubleSpinBox", "ctkDoubleSpinBox", "qMRMLSliderWidget"},
    "str": {"QLineEdit", "QLabel", "QTextEdit"},
}
QT_BUILTIN = {"QWidget", "QLabel", "QPushButton", "QCheckBox", "QComboBox", "QProgressBar", "QFrame", "QLineEdit",
              "QTextEdit", "QSpinBox", "QDoubleSpinBox", "QGroupBox", "QTableView"}


@pytest.fixture(scope="module")
def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    widgets = {w.get("name"): w for w in root.iter("widget")}
    assert root.find("class").text == "WeakTumorSeg"
    return widgets


@pytest.fixture(scope="module")
def module_tree() -> ast.Module:
    return ast.parse(MODULE_PY.read_text())


@pytest.fixture(scope="module")
def helper_trees() -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text()) for p in sorted(HELPERS_DIR.glob("*.py"))}


def _constant(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} is not defined in {MODULE_PY.name}")


def _used_ui_names(tree: ast.Module, max_channels: int) -> set[str]:
    """``self.ui.<name>`` plus ``getattr(self.ui, "<name>")`` / ``getattr(self.ui, f"<prefix>{i}")``."""
    names: set[str] = set()

    def is_self_ui(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "ui" and isinstance(node.value, ast.Name)
                and node.value.id == "self")

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_self_ui(node.value):
            names.add(node.attr)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
              and node.args and is_self_ui(node.args[0])):
            arg = node.args[1]
            if isinstance(arg, ast.Constant):
                names.add(arg.value)
            elif isinstance(arg, ast.JoinedStr) and isinstance(arg.values[0], ast.Constant) and len(arg.values) == 2:
                names.update(f"{arg.values[0].value}{i}" for i in range(max_channels))
            else:
                raise AssertionError(f"line {node.lineno}: getattr(self.ui, ...) with a name this test cannot read")
    return names


def test_every_ui_name_the_widget_uses_exists(ui_widgets, module_tree, helper_trees):
    """In the Widget and in the GUI panels of the helper package (they are handed the same ``ui``)."""
    max_channels = _constant(module_tree, "MAX_CHANNELS")
    used = _used_ui_names(module_tree, max_channels)
    for tree in helper_trees.values():
        used |= _used_ui_names(tree, max_channels)
    assert {"segmentButton", "sliceTableView", "inputVolumeSelector3", "exportButton", "markKeptButton"} <= used
    missing = sorted(used - set(ui_widgets))
    assert not missing, f"the Widget uses self.ui names that {UI_FILE.name} lacks: {missing}"


def test_widget_defines_the_four_classes(module_tree):
    classes = {node.name: node for node in module_tree.body if isinstance(node, ast.ClassDef)}
    for name in ("WeakTumorSeg", "WeakTumorSegWidget", "WeakTumorSegLogic", "WeakTumorSegTest"):
        assert name in classes, name
    bases = {name: [ast.unparse(b) for b in node.bases] for name, node in classes.items()}
    assert bases["WeakTumorSeg"] == ["ScriptedLoadableModule"]
    assert bases["WeakTumorSegLogic"] == ["ScriptedLoadableModuleLogic"]
    assert bases["WeakTumorSegTest"] == ["ScriptedLoadableModuleTest"]
    assert "ScriptedLoadableModuleWidget" in bases["WeakTumorSegWidget"]


def test_module_file_stays_thin(helper_trees):
    """WeakTumorSeg.py keeps the template's classes and stays short; the work is in the helper package,
    whose modules are small functions too."""
    assert len(MODULE_PY.read_text().splitlines()) < 500
    trees = {MODULE_PY.name: ast.parse(MODULE_PY.read_text()), **helper_trees}
    long = [f"{name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)" for name, tree in trees.items()
            for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno >= 80]
    assert not long, f"functions over 80 lines: {long}"
    assert ast.get_docstring(helper_trees["__init__.py"]) and len(helper_trees["__init__.py"].body) == 1


def _parameter_fields(tree: ast.Module) -> dict[str, str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "WeakTumorSegParameterNode":
            assert any(ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list)
            fields = {}
            for item in node.body:
                if isinstance(item, ast.AnnAssign):
                    annotation = ast.unparse(item.annotation)
                    if annotation.startswith("Annotated["):
                        annotation = annotation[len("Annotated["):].split(",")[0]
                    fields[item.target.id] = "node" if annotation.startswith("vtkMRML") else annotation
            return fields
    raise AssertionError("WeakTumorSegParameterNode is not defined")


def test_parameter_node_bindings_match_fields_and_widget_types(ui_widgets, module_tree):
    fields = _parameter_fields(module_tree)
    max_channels = _constant(module_tree, "MAX_CHANNELS")
    assert {f"inputVolume{i}" for i in range(max_channels)} <= set(fields)
    for name in ("bundlePath", "device", "threshold", "scalpMargin", "showSeeds", "outputSegmentation"):
        assert name in fields, name
    bound = {}
    for widget_name, widget in ui_widgets.items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = (widget_name, widget.get("class"))
    for parameter, (widget_name, widget_class) in bound.items():
        assert parameter in fields, f"{widget_name} is bound to unknown parameter {parameter!r}"
        assert widget_class in CONNECTABLE[fields[parameter]], (
            f"{widget_name} ({widget_class}) cannot show a {fields[parameter]} parameter")
    assert set(fields) - set(bound) == {"device"}  # the device menu is filled by the Widget itself


def _form_rows(layout_name: str) -> dict[int, dict[int, ET.Element]]:
    """``{row: {column: widget}}`` of a form layout in the ``.ui`` file."""
    root = ET.parse(UI_FILE).getroot()
    layout = next(lay for lay in root.iter("layout") if lay.get("name") == layout_name)
    rows: dict[int, dict[int, ET.Element]] = {}
    for item in layout.findall("item"):
        row, column = int(item.get("row")), int(item.get("column"))
        assert column not in rows.get(row, {}), f"{layout_name}: two widgets at row {row}, column {column}"
        rows.setdefault(row, {})[column] = item.find("widget")
    return rows


def _properties(widget: ET.Element) -> dict[str, str]:
    return {prop.get("name"): prop[0].text for prop in widget.findall("property")}


def test_result_warnings_label_sits_under_the_status_line_hidden_until_needed(ui_widgets):
    """The core's warnings about a result are shown right under the status line, styled as a warning, and
    the label is hidden until a result has some (the review panel shows and hides it: test_slicer_logic.py)."""
    root = ET.parse(UI_FILE).getroot()
    main = next(lay for lay in root.iter("layout") if lay.get("name") == "verticalLayout")
    names = [item.find("widget").get("name") for item in main.findall("item") if item.find("widget") is not None]
    assert names[names.index("statusLabel") + 1] == "resultWarningsLabel"
    props = _properties(ui_widgets["resultWarningsLabel"])
    assert props["visible"] == "false" and props["wordWrap"] == "true" and "color:" in props["styleSheet"]


def _within_range(tree: ast.Module, field: str) -> tuple[float, float]:
    """The ``WithinRange(low, high)`` bounds of a parameter node field (module constants resolved)."""
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "WeakTumorSegParameterNode")
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and node.target.id == field:
            bound = node.annotation.slice.elts[1]
            assert ast.unparse(bound.func) == "WithinRange"
            return tuple(_constant(tree, a.id) if isinstance(a, ast.Name) else ast.literal_eval(a) for a in bound.args)
    raise AssertionError(f"no parameter {field}")


def test_scalp_margin_row_follows_the_filter_threshold(module_tree):
    rows = _form_rows("inputsFormLayout")
    threshold_row = next(r for r, cells in rows.items()
                         if 1 in cells and cells[1].get("name") == "thresholdSliderWidget")
    label, widget = rows[threshold_row + 1][0], rows[threshold_row + 1][1]
    assert _properties(label)["text"] == "Scalp margin:"
    props = _properties(widget)
    assert props["SlicerParameterName"] == "scalpMargin"
    assert props["suffix"] == " mm" and float(props["singleStep"]) == 1.0 and int(props["decimals"]) in (0, 1)
    low, high = _within_range(module_tree, "scalpMargin")
    assert (float(props["minimum"]), float(props["maximum"])) == (low, high) == (0.0, 50.0)
    assert props["toolTip"] == ("Clear the mask within this distance of the head's outer surface (scalp and skull). "
                                "Use 0 for skull-stripped images. The default comes from the bundle.")


def _method(tree: ast.Module, class_name: str, name: str) -> ast.FunctionDef:
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)


def test_a_new_bundle_brings_its_threshold_and_scalp_margin(module_tree):
    """Choosing another bundle sets both bundle defaults together, and Segment hands both to the Logic."""
    resets = {}
    for node in ast.walk(_method(module_tree, "WeakTumorSegWidget", "onBundleChanged")):
        if isinstance(node, ast.If):
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and ast.unparse(stmt.targets[0]).startswith("self._parameterNode."):
                    resets[ast.unparse(stmt.targets[0]).rsplit(".", 1)[1]] = (node, ast.unparse(stmt.value))
    assert set(resets) == {"threshold", "scalpMargin"}
    assert resets["threshold"][0] is resets["scalpMargin"][0]  # under the same "another bundle" condition
    assert resets["threshold"][1] == "settings.filter_threshold"  # the bundle's (core) inference settings
    assert "settings.scalp_margin_mm" in resets["scalpMargin"][1]
    calls = [n for n in ast.walk(_method(module_tree, "WeakTumorSegWidget", "onSegmentButton"))
             if isinstance(n, ast.Call) and ast.unparse(n.func) == "self.logic.process"]
    assert len(calls) == 1
    keywords = {k.arg: ast.unparse(k.value) for k in calls[0].keywords}
    assert keywords["threshold"] == "p.threshold" and keywords["scalpMargin"] == "p.scalpMargin"


def test_custom_widgets_are_declared(ui_widgets):
    root = ET.parse(UI_FILE).getroot()
    declared = {c.find("class").text for c in root.iter("customwidget")}
    used = {w.get("class") for w in ui_widgets.values()}
    assert used - QT_BUILTIN <= declared, sorted(used - QT_BUILTIN - declared)


def test_icon_is_a_128_png():
    data = (MODULE_DIR / "Resources" / "Icons" / "WeakTumorSeg.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (128, 128)


def test_help_text_cites_the_papers():
    source = MODULE_PY.read_text()
    assert "2211.05269" in source
    assert "A novel GAN-based paradigm for weakly supervised brain tumor segmentation" in source
    assert "Petsiuk" in source and "RISE" in source
    assert re.search(r"helpText = _\(.*\{paper\}", source, re.S)
    assert re.search(r"acknowledgementText = _\(.*\{paper\}", source, re.S)


# ------------------------------------------------------------------------------------------------
# CMake and packaging


def _cmake_set(text: str, name: str) -> str:
    match = re.search(rf"set\(\s*{name}\s+(.*?)\)", text, re.S)
    assert match, f"{name} is not set"
    return match.group(1)


def test_extension_cmake_has_metadata():
    text = (REPO_ROOT / "CMakeLists.txt").read_text()
    for name in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                 "EXTENSION_SCREENSHOTURLS"):
        assert _cmake_set(text, name).strip().strip('"'), name
    assert _cmake_set(text, "EXTENSION_CATEGORY").strip('"') == "Segmentation"
    assert "PyTorch" in _cmake_set(text, "EXTENSION_DEPENDS").split("#")[0]
    assert re.search(r"^add_subdirectory\(WeakTumorSeg\)", text, re.M)


def test_module_cmake_lists_every_python_file_it_installs():
    """Every .py file of the core (subpackages included, as found on disk now) and of the helper package is
    listed; the module folder itself holds only WeakTumorSeg.py (Slicer takes each .py there for a module)."""
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    listed = _cmake_set(text, "WEAKTUMORSEGLIB_PYTHON_FILES").split()
    on_disk = sorted(p.relative_to(CORE_DIR).as_posix() for p in CORE_DIR.rglob("*.py"))
    assert "bundle/info.py" in on_disk
    assert sorted(listed) == on_disk, (
        "update WEAKTUMORSEGLIB_PYTHON_FILES in WeakTumorSeg/CMakeLists.txt: "
        f"missing {sorted(set(on_disk) - set(listed))}, not on disk {sorted(set(listed) - set(on_disk))}")
    assert _cmake_set(text, "MODULE_PYTHON_SCRIPTS").split() == ["${MODULE_NAME}.py"]
    assert re.search(r"foreach\(file \$\{WEAKTUMORSEGHELPERS_PYTHON_FILES\}\)\s*"
                     r"list\(APPEND MODULE_PYTHON_SCRIPTS \$\{MODULE_NAME\}Helpers/\$\{file\}\)", text)
    helpers = sorted(p.relative_to(HELPERS_DIR).as_posix() for p in HELPERS_DIR.rglob("*.py"))
    assert "__init__.py" in helpers
    assert sorted(_cmake_set(text, "WEAKTUMORSEGHELPERS_PYTHON_FILES").split()) == helpers, (
        "update WEAKTUMORSEGHELPERS_PYTHON_FILES in WeakTumorSeg/CMakeLists.txt")
    others = [p for p in MODULE_DIR.rglob("*.py") if p != MODULE_PY and HELPERS_DIR not in p.parents]
    assert not others, f"Python files outside the helper package are not installed: {others}"
    assert sorted(p.name for p in MODULE_DIR.glob("*.py")) == ["WeakTumorSeg.py"]
    assert not list(MODULE_DIR.rglob("WeakTumorSegLib*")), "nothing in the module may shadow the core"
    assert re.search(r"configure_file\(\s*\$\{CMAKE_CURRENT_SOURCE_DIR\}/\.\./WeakTumorSegLib/\$\{file\}", text)
    resources = _cmake_set(text, "MODULE_PYTHON_RESOURCES").replace("${MODULE_NAME}", "WeakTumorSeg").split()
    for resource in resources:
        assert (MODULE_DIR / resource).is_file(), resource
    shipped = sorted(str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file())
    assert shipped == sorted(resources)
    assert "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", text)
    assert (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").is_file()


def test_requirements_follow_pyproject_without_torch():
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    expected = sorted(d.replace(" ", "") for d in deps if not re.match(r"torch\b", d))
    lines = (MODULE_DIR / "Resources" / "requirements.txt").read_text().splitlines()
    requirements = sorted(ln.split("#")[0].strip().replace(" ", "") for ln in lines if ln.split("#")[0].strip())
    assert requirements == expected


def test_slicer_core_is_pinned_in_the_test_extra():
    test_extra = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    pins = [r for r in test_extra if r.startswith("slicer-core==")]
    assert len(pins) == 1 and "python_version == '3.11'" in pins[0]
