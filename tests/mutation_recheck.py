"""Re-run mutmut's mutants against chosen tests, all in one process (docs/testing.md).

mutmut 3 compiles every mutant into ``mutants/src`` behind a trampoline that reads ``MUTANT_UNDER_TEST`` on each
call, so one Python process can try mutant after mutant without re-importing torch. Used to re-check the
survivors of a ``mutmut run`` against tests written afterwards, and to finish a run on a loaded machine.

    cd mutants && cp ../tests/*.py tests/ && \
        python ../tests/mutation_recheck.py NAMES_FILE -- tests/test_x.py -k "new_test or other"

NAMES_FILE holds one mutant name per line (as ``mutmut results`` prints them). A mutant is killed when pytest
exits 1 (a test failed); any other exit code (2: collection error, ...) counts as not killed. Prints one line
per mutant and a total. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys


def main(argv: list[str]) -> int:
    names_file, pytest_args = argv[0], argv[argv.index("--") + 1 :]
    sys.path.insert(0, os.path.abspath("src"))  # the mutated package, ahead of any installed fedlora
    sys.path[:] = [p for p in sys.path if not p.endswith("/src") or p == os.path.abspath("src")]
    import pytest

    names = [line.strip() for line in open(names_file) if line.strip()]
    killed = 0
    for name in names:
        os.environ["MUTANT_UNDER_TEST"] = name
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", *pytest_args])
        killed += code == 1
        print(f"{'KILLED' if code == 1 else f'SURVIVED({int(code)})'} {name}", flush=True)
    print(f"killed {killed} of {len(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
