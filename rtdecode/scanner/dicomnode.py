"""The bridge as a DICOM node: the scanner pushes images (C-STORE) and volumes leave as they complete.

Many sites cannot mount the scanner's export folder on the decoding computer; instead the scanner
sends each image to a DICOM node. :class:`DicomNode` is a Storage SCP (pynetdicom) that accepts
MR Image Storage (mosaics, per-slice images) and Enhanced MR Image Storage (multi-frame), and puts
each received dataset through the same :class:`~rtdecode.scanner.assemble.Assembler` as the
folder watch, so a volume is sent the moment its last slice arrives, whatever the order in which
the scanner interleaves them.

Datasets are taken over from the network as DICOM, never unpickled. The node binds 127.0.0.1
unless another host is configured, and may accept only a list of calling AE titles.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rtdecode.config import is_loopback
from rtdecode.errors import BindError, VolumeError
from rtdecode.scanner.assemble import Assembler
from rtdecode.scanner.clock import Dispatch, ScannerClock
from rtdecode.scanner.dicom import check_image
from rtdecode.scanner.readers import NotAnImage
from rtdecode.volume import Volume

log = logging.getLogger(__name__)

MR_STORAGE = ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1")  # MR, Enhanced MR
_SUCCESS, _CANNOT_UNDERSTAND = 0x0000, 0xC210


class DicomNode:
    """Receive images over DICOM and hand complete volumes to ``send``.

    Parameters
    ----------
    send : callable
        Called with each :class:`~rtdecode.volume.Volume`, in order of completion.
    clock : ScannerClock or None
        Makes the volumes and their time stamps (see :class:`~rtdecode.scanner.clock.ScannerClock`).
    port : int
        TCP port to listen on (0: any free port, see :attr:`port` once running).
    host : str
        Address to bind; 127.0.0.1 unless the scanner is on another computer.
    ae_title : str
        This node's AE title, as entered on the scanner.
    calling_ae_titles : sequence of str
        Accept associations only from these AE titles (empty: any).
    save_to : str or Path or None
        Also write every received image to this folder, named by its SOP instance UID.
    """

    def __init__(
        self,
        send: Callable[[Volume], None],
        clock: ScannerClock | None = None,
        port: int = 11112,
        host: str = "127.0.0.1",
        ae_title: str = "RTDECODE",
        calling_ae_titles: tuple[str, ...] = (),
        save_to: str | Path | None = None,
    ) -> None:
        from pynetdicom import AE
        from pynetdicom.presentation import DEFAULT_TRANSFER_SYNTAXES
        from pynetdicom.sop_class import Verification

        self.dispatch = Dispatch(send, clock)
        self.port, self.host = port, host
        self.save_to = Path(save_to) if save_to else None
        if self.save_to is not None:
            self.save_to.mkdir(parents=True, exist_ok=True)
        self.assembler = Assembler()
        self.failed: list[str] = []
        self.n_received = 0
        self._ae = AE(ae_title=ae_title)
        for uid in MR_STORAGE:
            self._ae.add_supported_context(uid, DEFAULT_TRANSFER_SYNTAXES)
        self._ae.add_supported_context(Verification)
        self._ae.require_calling_aet = list(calling_ae_titles)
        self._queue: queue.Queue[tuple[object, int, str]] = queue.Queue()
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask :meth:`run` to return; safe from another thread or a signal handler."""
        self._stop.set()

    def _on_store(self, event) -> int:
        # pynetdicom's thread: check and keep the dataset; the volume is assembled in run()'s thread.
        arrived = time.monotonic_ns()
        ds = event.dataset
        ds.file_meta = event.file_meta
        where = f"C-STORE from {event.assoc.requestor.ae_title} ({ds.get('SOPInstanceUID', '?')})"
        try:
            check_image(ds, where)
        except VolumeError as err:
            log.error("%s", err)
            self.failed.append(where)
            return _CANNOT_UNDERSTAND
        if self.save_to is not None:
            name = re.sub(r"[^0-9.]", "_", str(ds.get("SOPInstanceUID", arrived))) + ".dcm"  # a UID, no path
            ds.save_as(self.save_to / f".{name}", enforce_file_format=True)
            (self.save_to / f".{name}").rename(self.save_to / name)  # appear whole
        self._queue.put((ds, arrived, where))
        return _SUCCESS

    def run(
        self,
        max_volumes: int | None = None,
        idle_exit_s: float | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> int:
        """Serve until stopped, ``max_volumes`` were sent, or no image came for ``idle_exit_s``.

        ``on_ready`` is called once the node accepts associations.

        Returns
        -------
        int
            Volumes sent.

        Raises
        ------
        BindError
            If the port cannot be bound.
        """
        from pynetdicom import evt

        if not is_loopback(self.host):
            log.warning("DICOM node listening on %s: reachable from the network", self.host)
        try:
            server = self._ae.start_server(
                (self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
            )
        except OSError as err:
            raise BindError(f"cannot listen for DICOM on {self.host}:{self.port}: {err}") from err
        self.port = server.server_address[1]
        log.info("DICOM node %s listening on %s:%d", self._ae.ae_title, self.host, self.port)
        if on_ready is not None:
            on_ready()
        last = time.monotonic()
        try:
            while not self._stop.is_set():
                if max_volumes is not None and self.dispatch.n_sent >= max_volumes:
                    break
                try:
                    ds, arrived, where = self._queue.get(timeout=0.05)
                except queue.Empty:
                    if idle_exit_s is not None and time.monotonic() - last > idle_exit_s:
                        break
                    continue
                last = time.monotonic()
                self.n_received += 1
                self._take(ds, arrived, where)
        finally:
            server.shutdown()
        if self.assembler.pending:
            log.error("volumes still missing slices at exit: %s", self.assembler.pending)
        return self.dispatch.n_sent

    def _take(self, ds, arrived: int, where: str) -> None:
        try:
            volumes = self.assembler.add_dataset(ds, where)
        except NotAnImage as err:
            log.warning("%s", err)
            return
        except VolumeError as err:  # one bad image must not end the session
            log.error("%s", err)
            self.failed.append(where)
            return
        for sv in sorted(volumes, key=lambda v: (v.series, v.seq)):
            self.dispatch(sv, arrived)
