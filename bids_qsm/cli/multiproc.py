"""Nipype's MultiProc plugin, made to fail a node whose worker process dies instead of hanging."""

from nipype.pipeline.plugins.multiproc import MultiProcPlugin


class MultiProc(MultiProcPlugin):
    """MultiProc in which a node whose worker was killed (out of memory, a crash in compiled
    code) fails with a crash file, and the run ends with an error.

    Nipype's own plugin logs the `BrokenProcessPool` of such a worker from a callback and then
    waits for the node's result forever.
    """

    def _async_callback(self, future):
        try:
            super()._async_callback(future)
        except Exception as err:  # noqa: BLE001 - any failure to fetch the result is the node's
            # The callback can run before `_submit_job` has filed the future, while `_taskid`
            # is still this task's.
            taskid = next((t for t, f in list(self._task_obj.items()) if f is future), self._taskid)
            self._taskresult[taskid] = {
                "result": None,
                "taskid": taskid,
                "traceback": [
                    "ChildProcessError: the process running this node died (out of memory, or "
                    f"a crash in compiled code): {err!r}\n"
                ],
            }
