"""Guest configuration -> qemu-system-x86_64 argv. Pure; golden-tested."""
from __future__ import annotations

import dataclasses
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from orchestrator.guest.images import pmem

QBOOT_ROM = Path("/usr/share/qemu/qboot.rom")
# An Intel model with MCA/MCE; the guest sees MCG_SER_P and QEMU's 10 banks.
TCG_CPU_MODEL = "Skylake-Client-v4"
# no_timer_check: a TCG guest on a loaded host can miss check_timer()'s ticks and panic at boot with
# "IO-APIC + timer doesn't work!" (CI under stress, 6.1 on libvirt); the check proves nothing in a VM.
KERNEL_CMDLINE = "console=ttyS0 quiet panic=0 tsc=reliable no_timer_check"


@dataclass(frozen=True)
class QemuConfig:
    kernel: Path
    initrd: Path
    console_log: Path
    qmp_fd: int               # our end of a socketpair is the other one: no socket path to race on
    ssh_port: int
    memory_mib: int = 512
    vcpus: int = 1
    numa_nodes: int = 1       # guest.numa_nodes: RAM split evenly into that many nodes
    machine: str = "pc"
    accel: str = "tcg"        # "kvm" or "tcg"
    qemu_binary: str = "qemu-system-x86_64"
    data_dirs: tuple[Path, ...] = ()  # -L: the chosen QEMU's own ROMs (install.firmware_layout)
    extra_cmdline: str = ""
    pmem_mib: int | None = None   # guest.pmem: that much of the guest's RAM as legacy pmem (memmap=)
    firmware: Path | None = None  # qboot when available: it boots a -kernel guest fastest
    disk: Path | None = None      # a raw scratch image: /dev/vda, or /dev/vdb after a root disk
    root_disk: Path | None = None  # a qcow2 root file system (an overlay), the guest's /dev/vda
    root_cmdline: str = ""         # the root disk's kernel arguments (root=/dev/vda ...)
    seed: Path | None = None       # a cloud-init NoCloud seed volume (cidata), read-only, after the disks
    incoming: Path | None = None  # restore this saved guest instead of booting
    console_append: bool = False  # keep what console_log holds (a restored guest's earlier console)
    hmp_fd: int | None = None     # a human monitor of its own (QEMU sends it no events)
    console_fd: int | None = None # the console to a socket the harness reads (capped), not straight to a file
    paused: bool = False          # start with the vCPUs stopped (-S), until QMP cont
    # --keep: a second QMP monitor on a unix socket (in a private 0700 folder), so that
    # `mce-orchestrator inject` in another process can reach the kept guest.
    kept_qmp_socket: Path | None = None


def option_value(value: object) -> str:
    """A value inside a QEMU option list: ',' separates options, ',,' is a literal comma."""
    return str(value).replace(",", ",,")


def cpu_model(accel: str) -> str:
    # Under KVM the host CPU is an Intel/AMD one with MCA; "host" passes it through.
    return "host" if accel == "kvm" else TCG_CPU_MODEL


def kernel_cmdline(c: QemuConfig) -> str:
    pmem_arg = pmem.kernel_arg(c.pmem_mib) if c.pmem_mib else ""
    return " ".join(part for part in (KERNEL_CMDLINE, c.root_cmdline, pmem_arg, c.extra_cmdline) if part)


def numa_node_sizes(memory_mib: int, nodes: int) -> list[int]:
    """Guest RAM split into `nodes` NUMA nodes, MiB each: equal parts, the first
    node takes the remainder (every vCPU is on node 0). Pure."""
    share = memory_mib // nodes
    return [memory_mib - share * (nodes - 1)] + [share] * (nodes - 1)


def numa_argv(c: QemuConfig) -> list[str]:
    """One RAM backend per node (a node's memory is its own backend object) and the
    nodes, every vCPU on node 0; nothing for one node (QEMU's plain -m). Pure."""
    if c.numa_nodes <= 1:
        return []
    argv: list[str] = []
    for node, size in enumerate(numa_node_sizes(c.memory_mib, c.numa_nodes)):
        argv += ["-object", f"memory-backend-ram,id=ram-node{node},size={size}M",
                 "-numa", f"node,nodeid={node},memdev=ram-node{node}"
                 + (f",cpus=0-{c.vcpus - 1}" if node == 0 else "")]
    return argv


def build_argv(c: QemuConfig) -> list[str]:
    argv = [
        c.qemu_binary,
        *[arg for folder in c.data_dirs for arg in ("-L", str(folder))],
        "-name", "mce-guest,debug-threads=on",
        "-machine", f"{c.machine},accel={c.accel}",
        "-cpu", cpu_model(c.accel),
        "-m", str(c.memory_mib),
        "-smp", str(c.vcpus),
        *numa_argv(c),
        "-nodefaults", "-no-user-config", "-display", "none",
        # A reset is a failure we want to see, not a silent reboot.
        "-no-reboot",
        # Keep a panicked guest paused, so its state stays for whoever looks.
        "-action", "panic=pause",
        "-kernel", str(c.kernel),  # plain values, not option lists: no escaping
        "-initrd", str(c.initrd),
        "-append", kernel_cmdline(c),
        # The harness reads the console from a socket and writes console.log itself (capped);
        # without one, QEMU writes the file.
        "-chardev", (f"socket,id=console,fd={c.console_fd}" if c.console_fd is not None
                     else f"file,id=console,path={option_value(c.console_log)}"
                     + (",append=on" if c.console_append else "")),
        "-serial", "chardev:console",
        "-chardev", f"socket,id=qmp,fd={c.qmp_fd}",
        "-mon", "chardev=qmp,mode=control",
        # Only the forwarded SSH port, and only on loopback.
        "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{c.ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "pvpanic-pci",
    ]
    if c.hmp_fd is not None:
        argv += ["-chardev", f"socket,id=hmp,fd={c.hmp_fd}", "-mon", "chardev=hmp,mode=readline"]
    if c.root_disk is not None:
        # First, so it is /dev/vda. An overlay of the image's disk: writes never reach the image.
        argv += ["-drive", f"file={option_value(c.root_disk)},if=none,id=root0,format=qcow2,cache=unsafe,discard=unmap",
                 "-device", "virtio-blk-pci,drive=root0"]
    if c.disk is not None:
        # cache=unsafe: the disk is thrown away after the run; speed over durability.
        argv += ["-drive", f"file={option_value(c.disk)},if=none,id=disk0,format=raw,cache=unsafe",
                 "-device", "virtio-blk-pci,drive=disk0"]
    if c.seed is not None:
        # Last, so the scratch disk stays /dev/vdb; cloud-init finds it by its label.
        argv += ["-drive", f"file={option_value(c.seed)},if=none,id=seed0,format=raw,readonly=on",
                 "-device", "virtio-blk-pci,drive=seed0"]
    if c.incoming is not None:
        # QEMU hands exec: URIs to /bin/sh: quoted, any path works.
        argv += ["-incoming", f"exec:cat {shlex.quote(str(c.incoming))}"]
    if c.kept_qmp_socket is not None:
        argv += ["-chardev", f"socket,id=qmp-kept,path={option_value(c.kept_qmp_socket)},server=on,wait=off",
                 "-mon", "chardev=qmp-kept,mode=control"]
    if c.firmware is not None:
        argv += ["-bios", str(c.firmware)]
    if c.paused:
        argv += ["-S"]
    return argv


def state_argv(c: QemuConfig) -> list[str]:
    """The command line of `c` without its per-run parts (QMP fd, SSH port, console and
    image paths, the state to restore): what shapes a saved guest. Pure."""
    return build_argv(dataclasses.replace(c, qmp_fd=-1, ssh_port=0, console_log=Path("console.log"),
                                          kernel=Path(c.kernel.name), initrd=Path(c.initrd.name),
                                          incoming=None, console_append=False,
                                          # Per-run folders: the disks' names and order shape the state.
                                          root_disk=Path(c.root_disk.name) if c.root_disk is not None else None,
                                          disk=Path(c.disk.name) if c.disk is not None else None,
                                          seed=Path(c.seed.name) if c.seed is not None else None))


def choose_accel(cpuinfo: str, kvm_device_usable: bool) -> str:
    """KVM only where the CPU really virtualizes (vmx/svm): a paravirtual /dev/kvm
    opens fine but cannot run a stock guest (see guest-mce-facts.md)."""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return "kvm" if kvm_device_usable and ({"vmx", "svm"} & flags) else "tcg"


def host_accel() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    return choose_accel(cpuinfo, os.access("/dev/kvm", os.R_OK | os.W_OK))


def default_firmware() -> Path | None:
    return QBOOT_ROM if QBOOT_ROM.is_file() else None
