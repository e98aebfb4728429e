"""Stage 6: the evidence judged against the scenario's expectations.

verdict.py (the checks and the verdict), logmatch.py (expected kernel log lines),
crashes.py (oopses, panics, warnings in the console), known_failures.py (a known
kernel bug turns a FAIL into an expected failure)."""
