"""Long-lived TPU-MLIR 1.30.2 worker: imports the tools once, then runs model_transform.py /
model_deploy.py's own `__main__` per request (runpy + patched argv), so each piece costs
seconds less than a fresh Python process. See shared/reference/inproc-workers.md.

Protocol: one JSON object per line on stdin, one JSON reply per line on the original stdout.
  {"tool": "model_transform.py", "argv": [...], "cwd": "/abs/dir", "log": "/abs/log"}
  -> {"ok": true, "seconds": 0.4} | {"ok": false, "error": "...", "seconds": ...}
The first reply, before any request, is {"ready": true, "version": "...", "import_s": ...}.
"""
import contextlib
import gc
import json
import os
import sys
import time
import traceback

# Replies go to a private copy of stdout; everything else printed (imports, tools, tpuc-opt
# children) goes to stderr or to the job's log, never into the protocol stream.
REPLY = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)

PINNED = "1.30.2"
T0 = time.time()
TOOLS = os.path.join(os.environ["TPUC_ROOT"], "python", "tools")


def reply(obj):
    REPLY.write(json.dumps(obj) + "\n")
    REPLY.flush()


try:
    from importlib import metadata

    VERSION = metadata.version("tpu_mlir")
    import runpy

    import model_transform  # noqa: F401  (tools/ is on PYTHONPATH)
    import model_deploy  # noqa: F401
    import transform.OnnxConverter  # noqa: F401  (the slow one: onnxsim, onnxruntime, torch)
    import mlir.ir
    from tpu_mlir.python.utils import auto_remove
except BaseException as e:  # noqa: BLE001  report, do not hang the driver
    reply({"ready": False, "error": f"importing TPU-MLIR failed: {type(e).__name__}: {e}"})
    sys.exit(1)

if not VERSION.startswith(PINNED):
    reply({"ready": False, "error": f"TPU-MLIR {VERSION} is installed, llm-convert needs {PINNED}"})
    sys.exit(1)


def mlir_context_left():
    try:
        mlir.ir.Context.current
        return True
    except ValueError:
        return False


def drop_leaked_mlir_frames():
    """A converter that raised mid-import leaves its Context/Location pushed; pop them so the
    next job starts clean (gc first: the dead converter's __del__ pops its own frame)."""
    if mlir_context_left():
        gc.collect()
    while mlir_context_left():
        try:
            mlir.ir.Location.current.__exit__(None, None, None)
        except ValueError:
            pass
        mlir.ir.Context.current.__exit__(None, None, None)


@contextlib.contextmanager
def output_to(path):
    """fd 1/2 (prints, logging, tpuc-opt children) go to the job's log file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def run_tool(tool, argv, cwd, log):
    script = os.path.join(TOOLS, tool)
    old_cwd, old_argv = os.getcwd(), sys.argv[:]
    # Module-level list that upstream never clears: stale marks would delete files of later jobs.
    auto_remove.g_auto_remove_files.clear()
    error = None
    try:
        os.chdir(cwd)
        sys.argv = [script, *argv]
        with output_to(log):
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as e:
                if e.code not in (0, None):
                    error = f"{tool} exited with status {e.code}"
            except BaseException as e:  # noqa: BLE001  RuntimeError from tpuc-opt, asserts, ...
                error = f"{type(e).__name__}: {e}"
                traceback.print_exc()
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
        auto_remove.g_auto_remove_files.clear()
        drop_leaked_mlir_frames()
    return error


reply({"ready": True, "version": VERSION, "import_s": round(time.time() - T0, 3)})
for line in sys.stdin:
    if not line.strip():
        continue
    t = time.time()
    try:
        req = json.loads(line)
        err = run_tool(req["tool"], req["argv"], req["cwd"], req["log"])
    except Exception as e:  # noqa: BLE001  a malformed request must not kill the worker
        err = f"bad request: {type(e).__name__}: {e}"
    reply({"ok": err is None, "error": err, "seconds": round(time.time() - t, 3)})
