from pathlib import Path

from orchestrator.guest.qemu import argv as qemu_args


def config(**kw):
    base = dict(kernel=Path("/img/vmlinuz"), initrd=Path("/img/initrd"), console_log=Path("/a/console.log"),
                qmp_fd=7, ssh_port=2222)
    return qemu_args.QemuConfig(**(base | kw))


def test_golden_argv_tcg():
    assert qemu_args.build_argv(config(firmware=Path("/usr/share/qemu/qboot.rom"))) == [
        "qemu-system-x86_64", "-name", "mce-guest,debug-threads=on",
        "-machine", "pc,accel=tcg", "-cpu", "Skylake-Client-v4", "-m", "512", "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-action", "panic=pause",
        "-kernel", "/img/vmlinuz", "-initrd", "/img/initrd",
        "-append", "console=ttyS0 quiet panic=0 tsc=reliable no_timer_check",
        "-chardev", "file,id=console,path=/a/console.log", "-serial", "chardev:console",
        "-chardev", "socket,id=qmp,fd=7", "-mon", "chardev=qmp,mode=control",
        "-netdev", "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22",
        "-device", "virtio-net-pci,netdev=net0", "-device", "pvpanic-pci",
        "-bios", "/usr/share/qemu/qboot.rom",
    ]


def test_kvm_uses_host_cpu_and_no_firmware_override():
    argv = qemu_args.build_argv(config(accel="kvm", vcpus=4, memory_mib=1024))
    assert argv[argv.index("-cpu") + 1] == "host"
    assert argv[argv.index("-machine") + 1] == "pc,accel=kvm"
    assert argv[argv.index("-smp") + 1] == "4" and argv[argv.index("-m") + 1] == "1024"
    assert "-bios" not in argv


def test_ssh_forward_is_loopback_only():
    netdev = qemu_args.build_argv(config())[qemu_args.build_argv(config()).index("-netdev") + 1]
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in netdev and "restrict=on" in netdev


def test_accel_needs_vmx_or_svm_not_just_dev_kvm():
    assert qemu_args.choose_accel("flags\t: fpu vme hypervisor\n", kvm_device_usable=True) == "tcg"
    assert qemu_args.choose_accel("flags\t: fpu vmx\n", kvm_device_usable=True) == "kvm"
    assert qemu_args.choose_accel("flags\t: fpu svm\n", kvm_device_usable=False) == "tcg"


def test_restore_from_a_saved_guest():
    argv = qemu_args.build_argv(config(incoming=Path("/cache/snapshots/debian-6.1-abc.state")))
    assert argv[argv.index("-incoming") + 1] == "exec:cat /cache/snapshots/debian-6.1-abc.state"


def test_a_snapshot_path_a_shell_would_interpret_is_quoted():
    import shlex
    argv = qemu_args.build_argv(config(incoming=Path("/tmp/a,b/x; reboot $(id)")))
    uri = argv[argv.index("-incoming") + 1]
    assert uri.startswith("exec:") and shlex.split(uri[len("exec:"):]) == ["cat", "/tmp/a,b/x; reboot $(id)"]


def test_paths_with_commas_are_escaped_in_option_lists():
    argv = qemu_args.build_argv(config(console_log=Path("/a,b/console.log"), disk=Path("/d,x/disk.img")))
    assert argv[argv.index("-chardev") + 1] == "file,id=console,path=/a,,b/console.log"
    assert argv[argv.index("-drive") + 1].startswith("file=/d,,x/disk.img,if=none")


def test_restored_console_is_appended_to():
    argv = qemu_args.build_argv(config(console_append=True))
    assert argv[argv.index("-chardev") + 1] == "file,id=console,path=/a/console.log,append=on"


def test_golden_argv_disk_boot():
    """A distribution image: its own kernel and initrd, root on the overlay (vda), the scratch disk after it."""
    argv = qemu_args.build_argv(config(root_disk=Path("/tmp/mce-overlay-x/root.qcow2"),
                                       root_cmdline="root=/dev/vda rw cloud-init=disabled",
                                       disk=Path("/tmp/mce-disk-y/disk.img")))
    assert argv[argv.index("-append") + 1] == "console=ttyS0 quiet panic=0 tsc=reliable no_timer_check root=/dev/vda rw cloud-init=disabled"
    assert argv[argv.index("-kernel"):argv.index("-kernel") + 4] == ["-kernel", "/img/vmlinuz", "-initrd", "/img/initrd"]
    drives = [argv[i + 1] for i, a in enumerate(argv) if a in ("-drive", "-device") and "virtio-blk" in argv[i + 1]
              or a == "-drive"]
    assert drives == [
        "file=/tmp/mce-overlay-x/root.qcow2,if=none,id=root0,format=qcow2,cache=unsafe,discard=unmap",
        "virtio-blk-pci,drive=root0",
        "file=/tmp/mce-disk-y/disk.img,if=none,id=disk0,format=raw,cache=unsafe",
        "virtio-blk-pci,drive=disk0",
    ]


def test_no_root_disk_no_root_arguments():
    argv = qemu_args.build_argv(config(extra_cmdline="mitigations=off"))
    assert argv[argv.index("-append") + 1] == "console=ttyS0 quiet panic=0 tsc=reliable no_timer_check mitigations=off"
    assert "id=root0" not in " ".join(argv)


def test_pmem_is_a_memmap_range_of_guest_ram_on_the_kernel_command_line():
    argv = qemu_args.build_argv(config(pmem_mib=128, extra_cmdline="mitigations=off"))
    assert argv[argv.index("-append") + 1] == "console=ttyS0 quiet panic=0 tsc=reliable no_timer_check memmap=128M!256M mitigations=off"
    assert argv[argv.index("-m") + 1] == "512"  # QEMU's RAM is unchanged: the guest kernel carves the range
    # It shapes the saved guest: a guest without it is another configuration.
    assert qemu_args.state_argv(config(pmem_mib=128)) != qemu_args.state_argv(config())


def test_numa_nodes_split_ram_into_backends_and_nodes():
    argv = qemu_args.build_argv(config(numa_nodes=2, vcpus=2, memory_mib=512))
    at = argv.index("-object")
    assert argv[at:at + 8] == [
        "-object", "memory-backend-ram,id=ram-node0,size=256M", "-numa", "node,nodeid=0,memdev=ram-node0,cpus=0-1",
        "-object", "memory-backend-ram,id=ram-node1,size=256M", "-numa", "node,nodeid=1,memdev=ram-node1"]
    assert argv[argv.index("-m") + 1] == "512"


def test_one_numa_node_is_plain_memory():
    assert "-numa" not in qemu_args.build_argv(config()) and "-object" not in qemu_args.build_argv(config())


def test_numa_node_sizes_sum_to_the_guest_ram():
    assert qemu_args.numa_node_sizes(512, 2) == [256, 256]
    assert qemu_args.numa_node_sizes(500, 3) == [168, 166, 166]
    assert qemu_args.numa_node_sizes(384, 1) == [384]


def test_numa_nodes_shape_the_saved_guest():
    # The snapshot key is made from state_argv(): a 2-node guest never restores a 1-node one's state.
    assert qemu_args.state_argv(config(numa_nodes=2)) != qemu_args.state_argv(config())
