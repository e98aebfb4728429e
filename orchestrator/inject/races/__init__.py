"""The forced races: the harness stops the guest's vCPUs through QEMU's gdbstub
(gdbstub.py) so that the machine check lands inside a kernel window the probe
opens: highorder.py (take-free-block) and recompound.py (retake-thp-block)."""
