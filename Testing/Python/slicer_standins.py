"""Stand-ins for the parts of the Slicer application that PyPI ``slicer-core`` lacks, so that tests can execute
``MedSAMAgent.py`` itself on a real MRML scene.

Only what slicer-core does not have is replaced: the ``qt`` and ``ctk`` modules, ``slicer.app``, the GUI
helpers of ``slicer.util`` (``loadUI``, ``childWidgetVariables``, ``mainWindow``, the dialogs),
``slicer.ScriptedLoadableModule`` and ``PyTorchUtils``. Everything else (MRML, the module logics,
``slicer.util``'s array helpers, ``VTKObservationMixin``) is the real library.

Every stand-in is strict: a name the real API does not have raises AttributeError, like the real one does,
so a typo (``slicer.vtkCommand``, ``button.clickd``) fails the test. Each class models a subset of the real
Qt / CTK / MRML-widget API with the real names; a real name that is not modelled raises too (add it here,
with the real name and behaviour, when the module starts to use it).

Widgets come from the module's real ``Resources/UI/*.ui``: ``loadUI`` reads the file, makes one stand-in
per ``<widget>`` by its class and applies the properties it models, so the panel the test drives is the one
the .ui declares.
"""

from __future__ import annotations

import inspect
import sys
import time
import types
import unittest
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Callable, Optional


class StandInError(AssertionError):
    """The module used the stand-in in a way the real API would not allow."""


# -- signals -------------------------------------------------------------------------------------------------
class Signal:
    """A Qt signal as PythonQt exposes it: ``connect``/``disconnect``/``emit``; a slot gets as many of the
    signal's arguments as it takes (PythonQt drops the rest)."""

    def __init__(self, name: str = ""):
        self.name = name
        self._slots: list[Callable] = []

    def connect(self, slot: Callable) -> None:
        if not callable(slot):
            raise TypeError(f"{self.name}.connect: {slot!r} is not callable")
        self._slots.append(slot)

    def disconnect(self, slot: Optional[Callable] = None) -> None:
        self._slots = [] if slot is None else [s for s in self._slots if s != slot]

    def emit(self, *args: Any) -> None:
        for slot in list(self._slots):
            slot(*args[:_arity(slot, len(args))])

    @property
    def connected(self) -> int:
        return len(self._slots)


def _arity(slot: Callable, available: int) -> int:
    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return available
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return available
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return min(available, len(positional))


# -- strict objects ------------------------------------------------------------------------------------------
class Strict:
    """An object whose attributes are its class's methods, its declared signals and its declared properties
    (``PROPERTIES``: name -> default); setting or reading anything else raises AttributeError."""

    PROPERTIES: dict[str, Any] = {}
    SIGNALS: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any):
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_signals", {})
        object.__setattr__(self, "_children", [])
        object.__setattr__(self, "_parent", None)
        for cls in reversed(type(self).__mro__):
            for name, default in getattr(cls, "PROPERTIES", {}).items():
                self._values[name] = default() if callable(default) else default
            for name in getattr(cls, "SIGNALS", ()):
                self._signals[name] = Signal(f"{type(self).__name__}.{name}")
        for name, value in kwargs.items():
            setattr(self, name, value)

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        signals = object.__getattribute__(self, "_signals")
        if name in signals:
            return signals[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r} (stand-in for the real class)")

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or name not in self._values:
            raise AttributeError(f"{type(self).__name__} has no property {name!r} (stand-in for the real class)")
        self._set(name, value)

    def _set(self, name: str, value: Any) -> None:
        self._values[name] = value


class StrictModule(types.ModuleType):
    """A module whose unknown names raise AttributeError (like the real one's)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r} (stand-in for the real module)")


# -- QtCore / QtGui ------------------------------------------------------------------------------------------
class QObject(Strict):
    PROPERTIES = {"objectName": ""}

    def __init__(self, parent: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        if parent is not None:
            self.setParent(parent)

    def setParent(self, parent: Any) -> None:
        old = self._parent
        if old is not None and self in old._children:
            old._children.remove(self)
        object.__setattr__(self, "_parent", parent)
        if parent is not None:
            parent._children.append(self)

    def parent(self) -> Any:
        return self._parent

    def children(self) -> list:
        return list(self._children)

    def setObjectName(self, name: str) -> None:
        self.objectName = name

    def deleteLater(self) -> None:
        self.setParent(None)
        object.__setattr__(self, "_deleted", True)

    def connect(self, signature: str, slot: Callable) -> None:
        """PythonQt's old-style ``object.connect("signal(args)", slot)``."""
        name = signature.split("(")[0]
        if name not in self._signals:
            raise AttributeError(f"{type(self).__name__} has no signal {signature!r}")
        self._signals[name].connect(slot)

    def disconnect(self, signature: str, slot: Optional[Callable] = None) -> None:
        name = signature.split("(")[0]
        if name not in self._signals:
            raise AttributeError(f"{type(self).__name__} has no signal {signature!r}")
        self._signals[name].disconnect(slot)


class QTimer(QObject):
    """Fires when ``slicer.app.processEvents()`` finds it due (there is no real event loop)."""

    PROPERTIES = {"interval": 0, "singleShot": False, "active": False}
    SIGNALS = ("timeout",)
    _running: list = []

    def setInterval(self, msec: int) -> None:
        self.interval = int(msec)

    def setSingleShot(self, single: bool) -> None:
        self.singleShot = bool(single)

    def start(self, msec: Optional[int] = None) -> None:
        if msec is not None:
            self.interval = int(msec)
        self.active = True
        object.__setattr__(self, "_due", time.monotonic() + self.interval / 1000.0)
        if self not in QTimer._running:
            QTimer._running.append(self)

    def stop(self) -> None:
        self.active = False
        if self in QTimer._running:
            QTimer._running.remove(self)

    def isActive(self) -> bool:
        return bool(self.active)

    @staticmethod
    def singleShot(msec: int, slot: Callable) -> None:  # noqa: F811 - Qt has both the property and the call
        timer = QTimer()
        timer.setSingleShot(True)
        timer.timeout.connect(slot)
        timer.start(msec)

    @classmethod
    def fire_due(cls) -> int:
        fired = 0
        now = time.monotonic()
        for timer in list(cls._running):
            if timer.active and now >= timer._due:
                if timer._values["singleShot"]:
                    timer.stop()
                else:
                    object.__setattr__(timer, "_due", now + timer.interval / 1000.0)
                timer.timeout.emit()
                fired += 1
        return fired


class QKeySequence(Strict):
    def __init__(self, key: str = ""):
        super().__init__()
        object.__setattr__(self, "_key", str(key))

    def toString(self) -> str:
        return self._key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QKeySequence) and other._key == self._key

    def __hash__(self) -> int:
        return hash(self._key)


class QShortcut(QObject):
    PROPERTIES = {"key": None, "enabled": True, "context": 1}
    SIGNALS = ("activated", "activatedAmbiguously")

    def setKey(self, key: QKeySequence) -> None:
        if not isinstance(key, QKeySequence):
            raise TypeError("QShortcut.setKey takes a QKeySequence")
        self.key = key

    def setContext(self, context: int) -> None:
        self.context = context

    def setEnabled(self, enabled: bool) -> None:
        self.enabled = bool(enabled)


class QIcon(Strict):
    def __init__(self, path: str = ""):
        super().__init__()
        object.__setattr__(self, "_path", path)

    def isNull(self) -> bool:
        return not Path(self._path).is_file()


QtNamespace = StrictModule("qt.Qt")
QtNamespace.WindowShortcut = 1
QtNamespace.WidgetWithChildrenShortcut = 2
QtNamespace.ApplicationShortcut = 3
QtNamespace.WaitCursor = 3
QtNamespace.NonModal = 0
QtNamespace.WindowModal = 1
QtNamespace.ApplicationModal = 2


# -- widgets -------------------------------------------------------------------------------------------------
class QWidget(QObject):
    PROPERTIES = {"enabled": True, "visible": True, "toolTip": "", "windowTitle": ""}

    def setEnabled(self, enabled: bool) -> None:
        self.enabled = bool(enabled)

    def setVisible(self, visible: bool) -> None:
        self.visible = bool(visible)

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False

    def isVisible(self) -> bool:
        return bool(self.visible)

    def setToolTip(self, text: str) -> None:
        self.toolTip = text

    def setLayout(self, layout: "QVBoxLayout") -> None:
        object.__setattr__(self, "_layout", layout)

    def layout(self) -> Optional["QVBoxLayout"]:
        return self.__dict__.get("_layout")

    def findChildren(self, cls: type) -> list:
        found = []
        for child in self._children:
            if isinstance(child, cls):
                found.append(child)
            if isinstance(child, QWidget):
                found.extend(child.findChildren(cls))
        return found


class QVBoxLayout(QObject):
    def addWidget(self, widget: QWidget) -> None:
        widget.setParent(self)

    def addStretch(self, stretch: int = 0) -> None:
        pass

    def count(self) -> int:
        return len(self._children)


class QMainWindow(QWidget):
    pass


class QLabel(QWidget):
    PROPERTIES = {"text": "", "wordWrap": False}


class QAbstractButton(QWidget):
    PROPERTIES = {"text": "", "checkable": False, "checked": False}
    SIGNALS = ("clicked", "toggled", "pressed", "released")

    def _set(self, name: str, value: Any) -> None:
        changed = name == "checked" and bool(value) != bool(self._values["checked"])
        super()._set(name, value)
        if changed:
            self.toggled.emit(bool(value))

    def setChecked(self, checked: bool) -> None:
        if self.checkable:
            self.checked = bool(checked)

    def isChecked(self) -> bool:
        return bool(self.checked)

    def toggle(self) -> None:
        if self.checkable:
            self.checked = not self.checked

    def click(self) -> None:
        """As Qt: a disabled button ignores the click; a checkable one toggles, then ``clicked`` fires."""
        if not self.enabled:
            return
        if self.checkable:
            self.checked = not self.checked
        self.clicked.emit(bool(self.checked))


class QPushButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    PROPERTIES = {"checkable": True}


class QLineEdit(QWidget):
    PROPERTIES = {"text": "", "placeholderText": "", "readOnly": False}
    SIGNALS = ("textChanged", "editingFinished")

    def _set(self, name: str, value: Any) -> None:
        changed = name == "text" and value != self._values["text"]
        super()._set(name, value)
        if changed:
            self.textChanged.emit(value)


class QSpinBox(QWidget):
    PROPERTIES = {"value": 0, "minimum": 0, "maximum": 99}
    SIGNALS = ("valueChanged",)

    def _set(self, name: str, value: Any) -> None:
        if name == "value":
            value = max(self._values["minimum"], min(self._values["maximum"], int(value)))
            changed = value != self._values["value"]
            super()._set(name, value)
            if changed:
                self.valueChanged.emit(value)
            return
        super()._set(name, value)


class QComboBox(QWidget):
    """Non-editable combo box: ``currentText`` can only be set to one of its items (as in Qt)."""

    PROPERTIES = {"currentIndex": -1}
    SIGNALS = ("currentIndexChanged", "currentTextChanged", "activated")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "_items", [])

    def __getattr__(self, name: str) -> Any:
        if name == "currentText":
            index = self._values["currentIndex"]
            return self._items[index][0] if 0 <= index < len(self._items) else ""
        if name == "count":
            return len(self._items)
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "currentText":
            index = self.findText(value)
            if index >= 0:
                self.currentIndex = index
            return
        super().__setattr__(name, value)

    def _set(self, name: str, value: Any) -> None:
        changed = name == "currentIndex" and value != self._values["currentIndex"]
        super()._set(name, value)
        if changed:
            self.currentIndexChanged.emit(value)
            self.currentTextChanged.emit(self.currentText)

    def addItem(self, text: str, userData: Any = None) -> None:
        self._items.append((str(text), userData))
        if self._values["currentIndex"] < 0:
            self.currentIndex = 0

    def addItems(self, texts: list) -> None:
        for text in texts:
            self.addItem(text)

    def clear(self) -> None:
        self._items.clear()
        self.currentIndex = -1

    def findText(self, text: str) -> int:
        for index, (item, _) in enumerate(self._items):
            if item == text:
                return index
        return -1

    def itemText(self, index: int) -> str:
        return self._items[index][0]

    def itemData(self, index: int) -> Any:
        return self._items[index][1]

    def setItemData(self, index: int, value: Any, role: int = 0) -> None:
        self._items[index] = (self._items[index][0], value)

    def setCurrentIndex(self, index: int) -> None:
        self.currentIndex = index


class QProgressBar(QWidget):
    PROPERTIES = {"minimum": 0, "maximum": 100, "value": 0}


class QProgressDialog(QWidget):
    PROPERTIES = {"labelText": "", "minimum": 0, "maximum": 100, "value": 0, "minimumDuration": 4000,
                  "windowModality": 0}
    SIGNALS = ("canceled",)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "_canceled", False)

    def setLabelText(self, text: str) -> None:
        self.labelText = text

    def setValue(self, value: int) -> None:
        self.value = value

    def wasCanceled(self) -> bool:
        return self._canceled

    def cancel(self) -> None:
        object.__setattr__(self, "_canceled", True)
        self.canceled.emit()

    def close(self) -> bool:
        self.visible = False
        return True


class QGroupBox(QWidget):
    PROPERTIES = {"title": "", "checkable": False, "checked": True}


class QTableWidgetItem(Strict):
    def __init__(self, text: str = ""):
        super().__init__()
        object.__setattr__(self, "_text", str(text))
        object.__setattr__(self, "_tip", "")

    def text(self) -> str:
        return self._text

    def setToolTip(self, tip: str) -> None:
        object.__setattr__(self, "_tip", tip)

    def toolTip(self) -> str:
        return self._tip


class QHeaderView(QWidget):
    PROPERTIES = {"stretchLastSection": False}

    def setStretchLastSection(self, stretch: bool) -> None:
        self.stretchLastSection = bool(stretch)


class QTableWidget(QWidget):
    PROPERTIES = {"rowCount": 0, "columnCount": 0}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "_items", {})
        object.__setattr__(self, "_header", QHeaderView())

    def setRowCount(self, rows: int) -> None:
        self.rowCount = int(rows)
        for key in [k for k in self._items if k[0] >= rows]:
            del self._items[key]

    def setColumnCount(self, columns: int) -> None:
        self.columnCount = int(columns)

    def setItem(self, row: int, column: int, item: QTableWidgetItem) -> None:
        if not (0 <= row < self.rowCount and 0 <= column < self.columnCount):
            return  # Qt ignores items outside the table
        self._items[(row, column)] = item

    def item(self, row: int, column: int) -> Optional[QTableWidgetItem]:
        return self._items.get((row, column))

    def horizontalHeader(self) -> QHeaderView:
        return self._header

    def scrollToBottom(self) -> None:
        pass


# -- CTK -----------------------------------------------------------------------------------------------------
class ctkCollapsibleButton(QAbstractButton):
    PROPERTIES = {"collapsed": False}


class ctkPathLineEdit(QWidget):
    PROPERTIES = {"currentPath": "", "filters": 0, "nameFilters": list, "showHistoryButton": True}
    SIGNALS = ("currentPathChanged", "validInputChanged")

    def _set(self, name: str, value: Any) -> None:
        changed = name == "currentPath" and value != self._values["currentPath"]
        super()._set(name, value)
        if changed:
            self.currentPathChanged.emit(value)


class ctkDirectoryButton(QWidget):
    PROPERTIES = {"directory": "", "caption": ""}
    SIGNALS = ("directoryChanged", "directorySelected")

    def _set(self, name: str, value: Any) -> None:
        changed = name == "directory" and value != self._values["directory"]
        super()._set(name, value)
        if changed:
            self.directoryChanged.emit(value)


# -- MRML widgets (over the real scene) ----------------------------------------------------------------------
class qMRMLWidget(QWidget):
    SIGNALS = ("mrmlSceneChanged",)

    def setMRMLScene(self, scene: Any) -> None:
        object.__setattr__(self, "_scene", scene)
        self.mrmlSceneChanged.emit(scene)
        for child in self.findChildren(qMRMLWidget):  # the .ui connects mrmlSceneChanged to the selectors
            child.__dict__["_scene"] = scene

    def mrmlScene(self) -> Any:
        return self.__dict__.get("_scene")


class qMRMLNodeComboBox(qMRMLWidget):
    PROPERTIES = {"nodeTypes": list, "noneEnabled": False, "addEnabled": True, "removeEnabled": True,
                  "renameEnabled": False, "showChildNodeTypes": True, "showHidden": False}
    SIGNALS = ("currentNodeChanged", "currentNodeIDChanged", "nodeAdded")

    def currentNode(self) -> Any:
        node = self.__dict__.get("_node")
        scene = self.mrmlScene()
        if node is not None and (scene is None or not scene.IsNodePresent(node)):
            self.__dict__["_node"] = None  # the real combo box drops nodes removed from the scene
            return None
        return node

    def currentNodeID(self) -> str:
        node = self.currentNode()
        return node.GetID() if node is not None else ""

    def setCurrentNode(self, node: Any) -> None:
        if node is not None:
            types_ = self.nodeTypes or []
            if types_ and not any(node.IsA(t) for t in types_):
                return  # the real combo box refuses nodes of other types
            if self.mrmlScene() is None or not self.mrmlScene().IsNodePresent(node):
                return
        if node is not self.currentNode():
            self.__dict__["_node"] = node
            self.currentNodeChanged.emit(node)
            self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")

    def setCurrentNodeID(self, node_id: str) -> None:
        scene = self.mrmlScene()
        self.setCurrentNode(scene.GetNodeByID(node_id) if scene is not None and node_id else None)


class qMRMLSegmentSelectorWidget(qMRMLNodeComboBox):
    PROPERTIES = {"editEnabled": False, "segmentationNodeSelectorVisible": True}
    SIGNALS = ("currentSegmentChanged",)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._values["nodeTypes"] = ["vtkMRMLSegmentationNode"]

    def currentSegmentID(self) -> str:
        node = self.currentNode()
        segment = self.__dict__.get("_segment", "")
        if node is None or not segment or node.GetSegmentation().GetSegment(segment) is None:
            return ""
        return segment

    def setCurrentSegmentID(self, segment_id: str) -> None:
        node = self.currentNode()
        if node is None or (segment_id and node.GetSegmentation().GetSegment(segment_id) is None):
            return
        if segment_id != self.__dict__.get("_segment", ""):
            self.__dict__["_segment"] = segment_id
            self.currentSegmentChanged.emit(segment_id)

    def setCurrentNode(self, node: Any) -> None:
        before = self.currentNode()
        super().setCurrentNode(node)
        if self.currentNode() is not before:
            self.__dict__["_segment"] = ""


WIDGET_CLASSES: dict[str, type] = {cls.__name__: cls for cls in (
    QWidget, QLabel, QPushButton, QCheckBox, QLineEdit, QSpinBox, QComboBox, QProgressBar, QGroupBox,
    QTableWidget, ctkCollapsibleButton, ctkPathLineEdit, ctkDirectoryButton, qMRMLWidget, qMRMLNodeComboBox,
    qMRMLSegmentSelectorWidget)}


def _property_value(element: ElementTree.Element) -> Any:
    child = next(iter(element), None)
    if child is None:
        return None
    if child.tag == "bool":
        return child.text == "true"
    if child.tag == "number":
        return int(child.text)
    if child.tag == "string":
        return child.text or ""
    if child.tag == "stringlist":
        return [s.text or "" for s in child]
    return None


def load_ui(path: str) -> qMRMLWidget:
    """``slicer.util.loadUI``: the .ui's widgets as stand-ins, nested as declared, properties applied."""
    tree = ElementTree.parse(path)

    def build(element: ElementTree.Element, parent: Optional[QWidget]) -> QWidget:
        cls_name = element.get("class", "")
        if cls_name not in WIDGET_CLASSES:
            raise StandInError(f"{Path(path).name}: no stand-in for widget class {cls_name!r}")
        widget = WIDGET_CLASSES[cls_name](parent)
        widget.objectName = element.get("name", "")
        for prop in element.findall("property"):
            name, value = prop.get("name"), _property_value(prop)
            if value is not None and name in widget._values:
                widget._set(name, value)
        if isinstance(widget, QComboBox):
            for item in element.findall("item"):
                widget.addItem(_property_value(item.find("property")))
        if isinstance(widget, QTableWidget):
            widget.setColumnCount(max(widget.columnCount, len(element.findall("column"))))
        for child in element.iter("widget"):
            if child is not element and _nearest_widget_parent(element, child):
                build(child, widget)
        return widget

    root = tree.getroot().find("widget")
    return build(root, None)


def _nearest_widget_parent(parent: ElementTree.Element, child: ElementTree.Element) -> bool:
    """True when ``child`` sits under ``parent`` with only layouts/items between them."""

    def search(node: ElementTree.Element) -> bool:
        for sub in node:
            if sub is child:
                return True
            if sub.tag in ("layout", "item") and search(sub):
                return True
        return False

    return search(parent)


class ChildWidgets:
    """``slicer.util.childWidgetVariables``: one attribute per named child widget; others raise."""

    def __init__(self, widget: QWidget):
        for child in [widget] + widget.findChildren(QWidget):
            if child.objectName:
                self.__dict__[child.objectName] = child

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"the panel's .ui has no widget named {name!r}")


# -- the application -----------------------------------------------------------------------------------------
class SliceWidget(QWidget):
    """``qMRMLSliceWidget`` as far as the module uses it: its slice node and logic."""

    def __init__(self, logic: Any):
        super().__init__()
        object.__setattr__(self, "_logic", logic)

    def mrmlSliceNode(self) -> Any:
        return self._logic.GetSliceNode()

    def sliceLogic(self) -> Any:
        return self._logic


class LayoutManager(QObject):
    PROPERTIES = {"layout": 3}  # SlicerLayoutConventionalView

    def __init__(self, slice_logics: dict):
        super().__init__()
        object.__setattr__(self, "_views", {name: SliceWidget(logic) for name, logic in slice_logics.items()})
        object.__setattr__(self, "_shown", set(slice_logics))

    def sliceWidget(self, name: str) -> Optional[SliceWidget]:
        """None for a view that is not in the current layout, as in Slicer."""
        return self._views.get(name) if name in self._shown else None

    def sliceViewNames(self) -> list:
        return sorted(self._shown)

    def show_only(self, names: set) -> None:
        """Test helper: the layout now shows only these views."""
        object.__setattr__(self, "_shown", set(names))


class ModuleManager(QObject):
    SIGNALS = ("moduleAboutToBeUnloaded",)


class Application(QObject):
    """``slicer.app``: events, the layout, the application logic, version, paths, testing flag."""

    PROPERTIES = {"majorVersion": 5, "minorVersion": 10, "temporaryPath": "", "applicationVersion": "5.10.0"}

    def __init__(self, app_logic: Any, slice_logics: dict, temporary_path: str):
        super().__init__()
        self._values["temporaryPath"] = temporary_path
        object.__setattr__(self, "_app_logic", app_logic)
        object.__setattr__(self, "_layout", LayoutManager(slice_logics))
        object.__setattr__(self, "_modules", ModuleManager())
        object.__setattr__(self, "events_processed", 0)

    def processEvents(self, *args: Any) -> None:
        object.__setattr__(self, "events_processed", self.events_processed + 1)
        QTimer.fire_due()

    def layoutManager(self) -> LayoutManager:
        return self._layout

    def applicationLogic(self) -> Any:
        return self._app_logic

    def moduleManager(self) -> ModuleManager:
        return self._modules

    def testingEnabled(self) -> bool:
        return True


class ModuleParent(QObject):
    """``qSlicerScriptedLoadableModule``: what a module's ``__init__`` fills in."""

    PROPERTIES = {"title": "", "categories": list, "dependencies": list, "contributors": list, "helpText": "",
                  "acknowledgementText": "", "path": "", "icon": None, "hidden": False}


class ModuleWidgetParent(qMRMLWidget):
    """``qSlicerScriptedLoadableModuleWidget``: a layout and ``isEntered``."""

    PROPERTIES = {"isEntered": False}

    def __init__(self):
        super().__init__()
        self.setLayout(QVBoxLayout())


# -- slicer.ScriptedLoadableModule (after Base/Python/slicer/ScriptedLoadableModule.py) ------------------------
def scripted_loadable_module(slicer: Any, qt: Any) -> types.ModuleType:
    module = StrictModule("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent
            self.moduleName = self.__class__.__name__
            parent.title = ""
            parent.categories = []
            parent.dependencies = []
            parent.contributors = []
            parent.helpText = ""
            parent.acknowledgementText = ""
            icon = Path(parent.path).parent / "Resources" / "Icons" / (self.moduleName + ".png")
            if icon.is_file():
                parent.icon = qt.QIcon(str(icon))
            try:
                slicer.selfTests
            except AttributeError:
                slicer.selfTests = {}
            slicer.selfTests[self.moduleName] = self.runTest

        def resourcePath(self, filename):
            return str(Path(self.parent.path).parent / "Resources" / filename)

        def runTest(self, msec=100, **kwargs):
            raise StandInError("the self-test needs the Slicer application")

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.moduleName = self.__class__.__name__
            if self.moduleName.endswith("Widget"):
                self.moduleName = self.moduleName[:-6]
            self.developerMode = False
            if not parent:
                raise StandInError("create the widget with a parent (the module panel), as Slicer does")
            self.parent = parent
            self.layout = self.parent.layout()
            slicer.app.moduleManager().connect("moduleAboutToBeUnloaded(QString)", self._onModuleAboutToBeUnloaded)

        def resourcePath(self, filename):
            return str(Path(slicer.util.modulePath(self.moduleName)).parent / "Resources" / filename)

        def cleanup(self):
            pass

        def _onModuleAboutToBeUnloaded(self, moduleName):
            if moduleName == self.moduleName:
                self.cleanup()
                slicer.app.moduleManager().disconnect("moduleAboutToBeUnloaded(QString)",
                                                      self._onModuleAboutToBeUnloaded)

        def setup(self):
            pass

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.moduleName = self.__class__.__name__
            if self.moduleName.endswith("Logic"):
                self.moduleName = self.moduleName[:-5]
            self.isSingletonParameterNode = True

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    module.__all__ = [cls.__name__ for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget,
                                                ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest)]
    return module


def qt_module() -> types.ModuleType:
    module = StrictModule("qt")
    for cls in (QObject, QTimer, QKeySequence, QShortcut, QIcon, QWidget, QVBoxLayout, QMainWindow, QLabel,
                QPushButton, QCheckBox, QLineEdit, QSpinBox, QComboBox, QProgressBar, QProgressDialog, QGroupBox,
                QTableWidget, QTableWidgetItem, QHeaderView):
        setattr(module, cls.__name__, cls)
    module.Qt = QtNamespace
    return module


def ctk_module() -> types.ModuleType:
    module = StrictModule("ctk")
    for cls in (ctkCollapsibleButton, ctkPathLineEdit, ctkDirectoryButton):
        setattr(module, cls.__name__, cls)
    return module


class Dialogs:
    """What the GUI helpers showed; ``answers`` decides what confirmations return."""

    def __init__(self):
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.infos: list[str] = []
        self.confirmations: list[str] = []
        self.progress: list[QProgressDialog] = []
        self.answer = True

    def error(self, text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
        self.errors.append(str(text))

    def warning(self, text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
        self.warnings.append(str(text))

    def info(self, text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
        self.infos.append(str(text))

    def confirm(self, text, windowTitle=None, parent=None, **kwargs):
        self.confirmations.append(str(text))
        return self.answer

    def create_progress(self, parent=None, value=0, maximum=100, labelText="", windowTitle="Processing...",
                        **kwargs):
        dialog = QProgressDialog(parent)
        dialog.value, dialog.maximum, dialog.labelText, dialog.windowTitle = value, maximum, labelText, windowTitle
        for name, value_ in kwargs.items():
            setattr(dialog, name, value_)
        dialog.show()
        self.progress.append(dialog)
        return dialog


def install(monkeypatch: Any, headless: Any, module_file: Path, temporary_path: str) -> types.SimpleNamespace:
    """Put the stand-ins in place (undone by ``monkeypatch``) and return them."""
    import slicer
    import slicer.util

    qt = qt_module()
    ctk = ctk_module()
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "ctk", ctk)
    app = Application(headless.app_logic, headless.slice_logics, temporary_path)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    main_window = QMainWindow()
    dialogs = Dialogs()
    pip_calls: list = []
    for name, value in {
        "loadUI": load_ui,
        "childWidgetVariables": ChildWidgets,
        "mainWindow": lambda: main_window,
        "errorDisplay": dialogs.error,
        "warningDisplay": dialogs.warning,
        "infoDisplay": dialogs.info,
        "confirmOkCancelDisplay": dialogs.confirm,
        "confirmYesNoDisplay": dialogs.confirm,
        "createProgressDialog": dialogs.create_progress,
        "delayDisplay": lambda message, autoCloseMsec=1000, parent=None, **kwargs: None,
        "modulePath": lambda name: str(module_file),
        "settingsValue": lambda key, default, converter=lambda v: v, settings=None: default,
        "pip_install": lambda requirements, **kwargs: pip_calls.append(requirements),
    }.items():
        monkeypatch.setattr(slicer.util, name, value)
    loadable = scripted_loadable_module(slicer, qt)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", loadable)
    monkeypatch.setattr(slicer, "ScriptedLoadableModule", loadable, raising=False)
    monkeypatch.setattr(slicer, "selfTests", {}, raising=False)
    return types.SimpleNamespace(qt=qt, ctk=ctk, app=app, main_window=main_window, dialogs=dialogs,
                                 pip_calls=pip_calls)
