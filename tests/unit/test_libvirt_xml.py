import xml.etree.ElementTree as ET
from pathlib import Path

from orchestrator.guest.libvirt import xml as libvirt_xml

GOLDEN_TCG = """<domain xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0" type="qemu">
  <name>mce-orch-h-1-1</name>
  <memory unit="MiB">512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch="x86_64" machine="pc">hvm</type>
    <loader type="rom" readonly="yes">/usr/share/qemu/qboot.rom</loader>
    <kernel>/img/vmlinux</kernel>
    <initrd>/img/initrd</initrd>
    <cmdline>console=ttyS0 quiet panic=0 tsc=reliable no_timer_check</cmdline>
  </os>
  <features>
    <acpi />
  </features>
  <cpu mode="custom" match="exact" check="none">
    <model fallback="forbid">Skylake-Client-noTSX-IBRS</model>
  </cpu>
  <clock offset="utc" />
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>preserve</on_crash>
  <seclabel type="static" model="dac" relabel="no">
    <label>+0:+0</label>
  </seclabel>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type="file">
      <source path="/a/console.log" />
      <target port="0" />
    </serial>
    <controller type="usb" model="none" />
    <memballoon model="none" />
  </devices>
  <qemu:commandline>
    <qemu:arg value="-device" />
    <qemu:arg value="pvpanic-pci,bus=pci.0,addr=0x1e" />
    <qemu:arg value="-netdev" />
    <qemu:arg value="user,id=hostnet0,restrict=on" />
    <qemu:arg value="-device" />
    <qemu:arg value="virtio-net-pci,netdev=hostnet0,bus=pci.0,addr=0x1d" />
  </qemu:commandline>
</domain>
"""


def config(**kw):
    base = dict(name="mce-orch-h-1-1", kernel=Path("/img/vmlinux"), initrd=Path("/img/initrd"),
                console_log=Path("/a/console.log"))
    return libvirt_xml.DomainConfig(**(base | kw))


def test_golden_domain_tcg():
    assert libvirt_xml.build_domain_xml(config(firmware=Path("/usr/share/qemu/qboot.rom"))) == GOLDEN_TCG


def test_kvm_disk_memory_vcpus_machine_cmdline():
    root = ET.fromstring(libvirt_xml.build_domain_xml(config(
        accel="kvm", vcpus=4, memory_mib=1024, machine="q35", disk=Path("/t/disk.img"), extra_cmdline="mce=2")))
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-passthrough" and root.find("cpu/model") is None
    assert root.find("vcpu").text == "4" and root.find("memory").text == "1024"
    assert root.find("os/type").get("machine") == "q35" and root.find("os/loader") is None
    assert root.find("os/cmdline").text.endswith(" mce=2")
    disk = root.find("devices/disk")
    assert disk.find("source").get("file") == "/t/disk.img" and disk.find("target").get("dev") == "vda"
    assert disk.find("target").get("bus") == "virtio"
    args = [a.get("value") for a in root.iter(f"{{{libvirt_xml.QEMU_NS}}}arg")]
    assert args[:2] == ["-device", "pvpanic-pci,bus=pcie.0,addr=0x1e"]  # q35's root bus
    assert args[-1] == "virtio-net-pci,netdev=hostnet0,bus=pcie.0,addr=0x1d"


def test_values_are_escaped_not_interpolated():
    text = libvirt_xml.build_domain_xml(config(extra_cmdline="a</cmdline><x>"))
    assert ET.fromstring(text).find("os/cmdline").text.endswith("a</cmdline><x>")


def test_ssh_forward_is_loopback_only():
    assert libvirt_xml.hostfwd_command(2222) == "hostfwd_add hostnet0 tcp:127.0.0.1:2222-:22"


def test_pmem_range_on_the_domain_command_line_too():
    root = ET.fromstring(libvirt_xml.build_domain_xml(config(pmem_mib=256, extra_cmdline="mce=2")))
    assert root.find("os/cmdline").text.endswith(" memmap=256M!256M mce=2")


def test_console_on_a_pty_for_a_remote_host():
    root = ET.fromstring(libvirt_xml.build_domain_xml(config(console_pty=True, console_append=True)))
    serial = root.find("devices/serial")
    assert serial.get("type") == "pty" and serial.find("source") is None  # no path of ours on that host
    assert serial.find("target").get("port") == "0"


def test_numa_cells_as_the_qemu_backend_nodes():
    xml = libvirt_xml.build_domain_xml(libvirt_xml.DomainConfig(
        name="n", kernel=Path("/k"), initrd=Path("/i"), console_log=Path("/c"), memory_mib=512, vcpus=2,
        numa_nodes=2))
    cells = ET.fromstring(xml).findall("./cpu/numa/cell")
    assert [c.attrib for c in cells] == [{"id": "0", "memory": "256", "unit": "MiB", "cpus": "0-1"},
                                        {"id": "1", "memory": "256", "unit": "MiB"}]
    assert ET.fromstring(xml).find("memory").text == "512"


def test_no_numa_element_for_one_node():
    xml = libvirt_xml.build_domain_xml(libvirt_xml.DomainConfig(
        name="n", kernel=Path("/k"), initrd=Path("/i"), console_log=Path("/c")))
    assert ET.fromstring(xml).find("./cpu/numa") is None


def test_user_networking_is_restricted_as_on_the_qemu_backend():
    # restrict=on: the guest cannot open connections to the host (its loopback services);
    # libvirt 9.0's <interface type='user'> cannot say so, hence no such interface at all.
    root = ET.fromstring(libvirt_xml.build_domain_xml(config()))
    assert root.find("devices/interface") is None
    args = [a.get("value") for a in root.iter(f"{{{libvirt_xml.QEMU_NS}}}arg")]
    netdevs = [args[i + 1] for i, a in enumerate(args) if a == "-netdev"]
    assert netdevs == [f"user,id={libvirt_xml.USER_NETDEV},restrict=on"]


def test_a_qemu_of_its_own_tree_gets_its_roms_with_L_as_on_the_qemu_backend(tmp_path):
    """--qemu BUILD_TREE on libvirt: the emulator is the build's binary and its pc-bios/ is
    passed with -L (libvirt has no element for it), as the QEMU backend passes it."""
    from orchestrator.guest.qemu.install import firmware_layout
    (tmp_path / "build" / "pc-bios").mkdir(parents=True)
    binary = tmp_path / "build" / "qemu-system-x86_64"
    binary.write_text("")
    folders, _ = firmware_layout(str(binary))
    root = ET.fromstring(libvirt_xml.build_domain_xml(config(emulator=str(binary), data_dirs=folders)))
    assert root.find("devices/emulator").text == str(binary)
    args = [a.get("value") for a in root.iter(f"{{{libvirt_xml.QEMU_NS}}}arg")]
    assert args[args.index("-L") + 1] == str(tmp_path / "build" / "pc-bios")
    system = ET.fromstring(libvirt_xml.build_domain_xml(config()))
    assert "-L" not in [a.get("value") for a in system.iter(f"{{{libvirt_xml.QEMU_NS}}}arg")]
