"""Peak extra memory of a statement, measured in a fresh subprocess (Linux): the peak resident set size
is reset after the set-up (/proc/self/clear_refs), so the figure is the statement's own peak above the
memory the set-up left in use."""
import json
import subprocess
import sys
import textwrap


def peak_extra_mib(setup: str, statement: str) -> float:
    """Runs `setup`, then `statement`; returns (peak RSS during the statement - RSS before it) in MiB."""
    code = textwrap.dedent(f"""
        import gc, json

        def status(key):
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

        {textwrap.indent(textwrap.dedent(setup), " " * 8).strip()}
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (the peak RSS) to the current RSS
        before = status("VmRSS")
        {statement}
        print(json.dumps((status("VmHWM") - before) / 1024))
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])
