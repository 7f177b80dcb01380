"""Peak extra memory of a callable, measured in a fresh subprocess as the growth of the peak RSS."""
import json
import subprocess
import sys
import textwrap


def peak_extra_mib(setup: str, statement: str) -> float:
    """Runs `setup`, records the peak RSS, runs `statement`, returns how much the peak RSS grew (MiB)."""
    code = textwrap.dedent(f"""
        import json, resource
        {setup}
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        {statement}
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps((after - before) / 1024))
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])
