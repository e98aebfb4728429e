"""The SSH endpoint of a libvirt URI and the configuration ssh reports for it (pure)."""
import pytest

from orchestrator.guest.libvirt.tunnel import (SshEndpoint, libssh_config, parse_ssh_config, ssh_config_argv,
                                         ssh_endpoint)

URI = ("qemu+ssh://root@127.0.0.1:2222/system?keyfile=/k/client_ed25519"
       "&command=/k/ssh-pinned&no_tty=1")


def test_a_qemu_ssh_uri_gives_user_host_port_keyfile_and_command():
    assert ssh_endpoint(URI) == SshEndpoint(transport="ssh", host="127.0.0.1", user="root", port=2222,
                                            keyfile="/k/client_ed25519", command="/k/ssh-pinned", known_hosts=None)


def test_defaults_are_left_to_ssh():
    endpoint = ssh_endpoint("qemu+ssh://hv2.example/system")
    assert (endpoint.user, endpoint.port, endpoint.keyfile, endpoint.command) == (None, None, None, "ssh")
    assert ssh_config_argv(endpoint) == ["ssh", "-G", "hv2.example"]


@pytest.mark.parametrize("uri", ["qemu:///system", "qemu+unix:///system", "qemu+tls://hv2.example/system",
                                 "qemu+tcp://hv2.example/system", "test:///default", "qemu+ssh:///system"])
def test_uris_without_an_ssh_host_have_no_tunnel(uri):
    assert ssh_endpoint(uri) is None


def test_libssh_transports_take_known_hosts_from_the_uri():
    endpoint = ssh_endpoint("qemu+libssh2://ci@hv3.example/system?known_hosts=/etc/mce/kh&keyfile=/etc/mce/id")
    assert endpoint.transport == "libssh2" and endpoint.known_hosts == "/etc/mce/kh"
    resolved = libssh_config(endpoint)
    assert (resolved.hostname, resolved.port, resolved.user) == ("hv3.example", 22, "ci")
    assert resolved.identity_files == ("/etc/mce/id",) and resolved.known_hosts == ("/etc/mce/kh",)


def test_ssh_is_asked_with_the_options_libvirt_gives_it():
    assert ssh_config_argv(ssh_endpoint(URI)) == ["/k/ssh-pinned", "-G", "-p", "2222", "-l", "root",
                                                  "-i", "/k/client_ed25519", "127.0.0.1"]


SSH_G = """user root
hostname 10.1.2.3
port 2222
stricthostkeychecking true
identityfile /k/client_ed25519
identityfile ~/.ssh/id_ed25519
globalknownhostsfile /dev/null
userknownhostsfile /k/known_hosts
"""


def test_the_pinned_known_hosts_and_the_key_come_from_ssh_itself():
    resolved = parse_ssh_config(SSH_G, ssh_endpoint(URI))
    assert (resolved.hostname, resolved.port, resolved.user) == ("10.1.2.3", 2222, "root")
    assert resolved.identity_files[0] == "/k/client_ed25519" and not resolved.identity_files[1].startswith("~")
    assert resolved.known_hosts == ("/k/known_hosts", "/dev/null")
    assert resolved.description == "root@10.1.2.3:2222"


def test_several_known_hosts_files_on_one_line_and_none():
    text = "userknownhostsfile ~/.ssh/known_hosts ~/.ssh/known_hosts2\nglobalknownhostsfile none\n"
    resolved = parse_ssh_config(text, ssh_endpoint("qemu+ssh://ci@hv/system"))
    assert len(resolved.known_hosts) == 2 and all(p.endswith(("known_hosts", "known_hosts2"))
                                                  and not p.startswith("~") for p in resolved.known_hosts)
    assert (resolved.hostname, resolved.port, resolved.user) == ("hv", 22, "ci")  # what the URI said
