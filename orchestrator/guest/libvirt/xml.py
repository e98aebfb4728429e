"""Guest configuration -> libvirt domain XML. Pure; golden-tested.

The same guest as qemu_args.build_argv: direct kernel boot of the same
kernel and initramfs, an Intel CPU model with MCA, memory, vCPUs, machine,
ACPI on, no reboot, a panic device, the serial console into a file, virtio
net on user networking, the scratch disk as /dev/vda. What libvirt would add
on its own and the QEMU backend does not have (USB controller, balloon) is
turned off.

Differences forced by Debian 12's libvirt 9.0 (see guest-mce-facts.md):
the CPU model is the unversioned alias of the same definition
(Skylake-Client-noTSX-IBRS), the pvpanic-pci device comes through
<qemu:commandline> (libvirt 9.0 refuses <panic model='pvpanic'/>), and the SSH
forward is added through the monitor after start (no <portForward> without
passt). libvirt 9.0's <interface type='user'> cannot say `restrict=on` (the
guest could reach the host's loopback services through it), so the user
netdev and its virtio-net device come through <qemu:commandline> too, with
`restrict=on` as on the QEMU backend.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from orchestrator.guest.images import pmem
from orchestrator.guest.qemu import argv as qemu_args
from orchestrator.guest.qemu.argv import KERNEL_CMDLINE

# The libvirt name of the Skylake-Client variant without TSX, with IBRS: an
# Intel family 6 model with MCA, MCG_SER_P and QEMU's 10 banks.
LIBVIRT_TCG_CPU_MODEL = "Skylake-Client-noTSX-IBRS"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
PANIC_PCI_SLOT = "0x1e"  # free on pc and q35 without USB or legacy PCI bridges
NIC_PCI_SLOT = "0x1d"    # likewise (q35 puts USB there; libvirt adds none here)
# The user netdev's id (the name libvirt gives the first <interface>'s); HMP hostfwd_add needs it.
USER_NETDEV = "hostnet0"
DOMAIN_PREFIX = "mce-orch-"


@dataclass(frozen=True)
class DomainConfig:
    name: str
    kernel: Path
    initrd: Path
    console_log: Path
    memory_mib: int = 512
    vcpus: int = 1
    numa_nodes: int = 1           # guest.numa_nodes: <cpu><numa> cells, as the QEMU backend's -numa nodes
    machine: str = "pc"
    accel: str = "tcg"
    emulator: str = "/usr/bin/qemu-system-x86_64"
    extra_cmdline: str = ""
    pmem_mib: int | None = None   # guest.pmem, as in the QEMU backend (memmap= on the command line)
    firmware: Path | None = None  # qboot: passed as -bios, like the QEMU backend
    data_dirs: tuple[Path, ...] = ()  # -L: the ROMs of the emulator's own tree (a build tree, a pinned QEMU)
    disk: Path | None = None
    incoming: bool = False        # wait for a saved guest's state (migrate-incoming) instead of booting
    console_append: bool = False  # keep what console_log holds (a restored guest's earlier console)
    run_as_root: bool = True      # QEMU runs as root and nothing is relabelled (see below)
    console_pty: bool = False     # a pty read through libvirt (a remote host's files are not ours)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs) -> ET.Element:
    element = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        element.text = text
    return element


def build_domain_xml(c: DomainConfig) -> str:
    ET.register_namespace("qemu", QEMU_NS)
    domain = ET.Element("domain", type="kvm" if c.accel == "kvm" else "qemu")
    _sub(domain, "name", c.name)
    _sub(domain, "memory", str(c.memory_mib), unit="MiB")
    _sub(domain, "vcpu", str(c.vcpus))
    os_ = _sub(domain, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine=c.machine)
    if c.firmware is not None:
        _sub(os_, "loader", str(c.firmware), type="rom", readonly="yes")
    _sub(os_, "kernel", str(c.kernel))
    _sub(os_, "initrd", str(c.initrd))
    pmem_arg = pmem.kernel_arg(c.pmem_mib) if c.pmem_mib else ""
    _sub(os_, "cmdline", " ".join(part for part in (KERNEL_CMDLINE, pmem_arg, c.extra_cmdline) if part))
    features = _sub(domain, "features")
    _sub(features, "acpi")  # without it libvirt passes -no-acpi; the QEMU backend has ACPI
    if c.accel == "kvm":
        cpu = _sub(domain, "cpu", mode="host-passthrough", check="none")
    else:
        cpu = _sub(domain, "cpu", mode="custom", match="exact", check="none")
        _sub(cpu, "model", LIBVIRT_TCG_CPU_MODEL, fallback="forbid")
    if c.numa_nodes > 1:
        numa = _sub(cpu, "numa")
        for node, size in enumerate(qemu_args.numa_node_sizes(c.memory_mib, c.numa_nodes)):
            # Every vCPU on node 0, as in the QEMU backend; libvirt wants a cpus= on each cell.
            _sub(numa, "cell", id=str(node), memory=str(size), unit="MiB",
                 **({"cpus": f"0-{c.vcpus - 1}"} if node == 0 else {}))
    _sub(domain, "clock", offset="utc")
    # A reset is a failure we want to see (QEMU backend: -no-reboot); a crashed
    # (panicked) guest stays paused for whoever looks (-action panic=pause).
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "destroy")
    _sub(domain, "on_crash", "preserve")
    if c.run_as_root:
        # The initramfs carries the guest's private host key and must stay
        # root-only 0600: QEMU runs as root, as the QEMU backend's does, and
        # libvirt's dynamic ownership chowns nothing.
        label = _sub(domain, "seclabel", type="static", model="dac", relabel="no")
        _sub(label, "label", "+0:+0")
    devices = _sub(domain, "devices")
    _sub(devices, "emulator", c.emulator)
    if c.console_pty:
        serial = _sub(devices, "serial", type="pty")
    else:
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=str(c.console_log), **({"append": "on"} if c.console_append else {}))
    _sub(serial, "target", port="0")
    if c.disk is not None:
        disk = _sub(devices, "disk", type="file", device="disk")
        # cache=unsafe: the disk is thrown away after the run; speed over durability.
        _sub(disk, "driver", name="qemu", type="raw", cache="unsafe")
        _sub(disk, "source", file=str(c.disk))
        _sub(disk, "target", dev="vda", bus="virtio")
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")
    # The panic device the QEMU backend's guest has, whose driver our initramfs
    # loads: pvpanic-pci. libvirt 9.0 knows only the ISA model (<panic
    # model='isa'/>, whose ACPI driver the image does not load), so QEMU gets it
    # through libvirt's documented command-line passthrough.
    # An explicit slot: QEMU reads these arguments before libvirt's own devices.
    bus = "pcie.0" if c.machine.startswith("q35") else "pci.0"
    passthrough = _sub(domain, f"{{{QEMU_NS}}}commandline")
    args = ["-device", f"pvpanic-pci,bus={bus},addr={PANIC_PCI_SLOT}",
            # User networking as the QEMU backend has it: restrict=on, the guest reaches nothing on
            # the host; only the SSH forward (hostfwd_add on 127.0.0.1, after start) comes in.
            "-netdev", f"user,id={USER_NETDEV},restrict=on",
            "-device", f"virtio-net-pci,netdev={USER_NETDEV},bus={bus},addr={NIC_PCI_SLOT}"]
    for folder in c.data_dirs:
        # A QEMU that is not the system's finds its option ROMs and BIOS in its own tree,
        # as the QEMU backend's guest does: libvirt has no element for -L.
        args += ["-L", str(folder)]
    if c.incoming:
        # A saved guest (QEMU's migration stream) is fed in after start through
        # an fd handed over the monitor: libvirt's seccomp sandbox forbids
        # exec: URIs, and libvirt's own save images restore only under the
        # saved name and UUID, so one at a time.
        args += ["-incoming", "defer"]
    for arg in args:
        _sub(passthrough, f"{{{QEMU_NS}}}arg", value=arg)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"


def hostfwd_command(port: int) -> str:
    """The HMP line that forwards 127.0.0.1:port (only loopback) to the guest's sshd."""
    return f"hostfwd_add {USER_NETDEV} tcp:127.0.0.1:{port}-:22"
