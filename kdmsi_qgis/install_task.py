"""Install, repair or remove the plugin's packages as a QGIS task (`kdmsi_qgis.install`).

The task manager runs pip in its worker thread; the task's Cancel (in the page or QGIS's task
bar) stops pip, and the plugin's folder is left as it was. Every pip line goes to the QGIS log
panel under "KD-MSI". No widget is touched here, so it runs headless in tests.
"""

from __future__ import annotations

from typing import Optional

from qgis.core import Qgis, QgsApplication, QgsTask
from qgis.PyQt.QtCore import QObject, pyqtSignal

from .bridge import log_message
from .install.installer import Outcome, Request, install, remove
from .install.pip_run import InstallCancelled

TITLES = {"install": "Installing", "repair": "Repairing", "remove": "Removing"}


def _work(task: QgsTask, action: str, request: Request, messages) -> Outcome:
    """Worker-thread body: one installer action, with progress, cancel and the log."""

    def progress(fraction: float, message: str) -> None:
        task.setProgress(100.0 * fraction)
        messages.emit(message)

    def line(text: str) -> None:
        log_message(text, Qgis.MessageLevel.Info)  # QgsMessageLog is safe to call from any thread

    if action == "remove":
        return remove(request)
    return install(request, progress, task.isCanceled, line, repair=action == "repair")


class DependencyRun(QObject):
    """One installer action in the background.

    Signals:
        progress(float): percent done.
        message(str): what pip is doing now.
        finished(bool, str): success, and a one-line message (the outcome or the error;
            "cancelled; nothing was changed" when cancelled).
    """

    progress = pyqtSignal(float)
    message = pyqtSignal(str)
    finished = pyqtSignal(bool, str)

    def __init__(self, action: str, request: Request, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.action = action
        self.task = QgsTask.fromFunction(
            f"{TITLES[action]} KD-MSI dependencies",
            _work,
            action,
            request,
            self.message,
            on_finished=self._done,
            flags=QgsTask.Flag.CanCancel,
        )
        self.task.progressChanged.connect(self.progress.emit)

    def start(self) -> None:
        log_message(f"{TITLES[self.action]} the plugin's packages", Qgis.MessageLevel.Info)
        QgsApplication.taskManager().addTask(self.task)

    def cancel(self) -> None:
        self.task.cancel()

    def _done(self, exception, result: Optional[Outcome] = None) -> None:
        if exception is None:
            log_message(result.message, Qgis.MessageLevel.Success)
            self.finished.emit(True, result.message)
        elif isinstance(exception, InstallCancelled) or self.task.isCanceled():
            message = "cancelled; nothing was changed"  # also when cancelled before it ran
            log_message(message, Qgis.MessageLevel.Info)
            self.finished.emit(False, message)
        else:
            log_message(str(exception), Qgis.MessageLevel.Critical)
            self.finished.emit(False, str(exception))
