"""Static checks of the harness's own hygiene (it runs as root)."""
import ast
from pathlib import Path

import orchestrator

PACKAGE = Path(orchestrator.__file__).parent


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def test_no_shell_anywhere_in_the_harness():
    offenders = []
    for source in PACKAGE.rglob("*.py"):
        tree = ast.parse(source.read_text())
        for call in calls(tree):
            name = ast.unparse(call.func)
            if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
                offenders.append(f"{source.name}:{call.lineno} {name}")
            for kw in call.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    offenders.append(f"{source.name}:{call.lineno} shell=")
    assert offenders == []


def test_forwarded_ports_and_sockets_are_loopback_only():
    text = (PACKAGE / "guest" / "qemu" / "argv.py").read_text() + (PACKAGE / "guest" / "qemu" / "__init__.py").read_text()
    assert "hostfwd=tcp:127.0.0.1:" in text and "0.0.0.0" not in text
    # QMP is a socketpair: no socket path anyone else could open.
    assert "socketpair()" in (PACKAGE / "guest" / "qemu" / "__init__.py").read_text()


def test_ssh_client_never_accepts_unknown_host_keys():
    text = (PACKAGE / "guest" / "ssh.py").read_text()
    assert "RejectPolicy()" in text and "AutoAddPolicy" not in text and "WarningPolicy" not in text
