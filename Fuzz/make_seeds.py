#!/usr/bin/env python3
"""Writes the seed corpora (Fuzz/corpus/<target>/) from readable samples.

Run once after changing the samples; the files are committed. Each seed is the input layout of its
target: FuzzPlugin = selector byte + stdin (selector % 6 = command ADD/DEL/CHECK/STATUS/GC/VERSION,
selector / 6 % 4 = environment variant, 1 = CNI_ARGS on the first line); FuzzResult = version byte
(index into the supported versions) + result JSON; FuzzCNIArgs = the CNI_ARGS text; FuzzRange =
the ipam section JSON (after an optional `IP=` line); FuzzBridgeConfig = an optional CNI_ARGS line
and the bridge config; FuzzPTPConfig = the ptp config; FuzzJSON = any JSON text.
"""
import hashlib
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]

RESULT_1 = {"cniVersion": "1.1.0",
            "interfaces": [{"name": "cni0", "mac": "0a:58:0a:01:02:01"},
                           {"name": "veth1a2b3c4d", "mac": "aa:bb:cc:dd:ee:ff", "mtu": 1500},
                           {"name": "eth0", "mac": "0a:58:0a:01:02:05", "sandbox": "/var/run/netns/x",
                            "socketPath": "/run/s.sock", "pciID": "0000:04:00.5"}],
            "ips": [{"interface": 2, "address": "10.1.2.5/24", "gateway": "10.1.2.1"},
                    {"interface": 2, "address": "2001:db8::5/64", "gateway": "2001:db8::1"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1", "mtu": 1400, "advmss": 1360, "priority": 10,
                        "table": 100, "scope": 0},
                       {"dst": "::/0"}],
            "dns": {"nameservers": ["10.1.2.1"], "domain": "example.org", "search": ["a.example.org"],
                    "options": ["ndots:5"]}}
RESULT_04 = {"cniVersion": "0.4.0",
             "interfaces": [{"name": "eth0", "mac": "0a:58:0a:01:02:05", "sandbox": "/proc/1/ns/net"}],
             "ips": [{"version": "4", "interface": 0, "address": "10.1.2.5/24", "gateway": "10.1.2.1"},
                     {"version": "6", "address": "fd00::5/64"}],
             "routes": [{"dst": "10.0.0.0/8", "gw": "10.1.2.1"}], "dns": {}}
RESULT_02 = {"cniVersion": "0.2.0",
             "ip4": {"ip": "10.1.2.5/24", "gateway": "10.1.2.1", "routes": [{"dst": "0.0.0.0/0"}]},
             "ip6": {"ip": "2001:db8::5/64", "routes": [{"dst": "::/0", "gw": "2001:db8::1"}]},
             "dns": {"nameservers": ["1.1.1.1"]}}
RESULT_IPAM = {"cniVersion": "1.0.0", "ips": [{"address": "10.88.0.2/16", "gateway": "10.88.0.1"}]}

BRIDGE = {"cniVersion": "1.0.0", "name": "mynet", "type": "bridge", "bridge": "cni0", "isGateway": True,
          "ipMasq": True, "mtu": 1500, "vlan": 0, "hairpinMode": False,
          "capabilities": {"mac": True, "ips": True},
          "runtimeConfig": {"mac": "0a:58:0a:01:02:05", "ips": ["10.1.2.5/24"]},
          "args": {"cni": {"ips": ["10.1.2.6"]}},
          "ipam": {"type": "host-local", "dataDir": "/run/x",
                   "ranges": [[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.10", "rangeEnd": "10.1.2.20",
                                "gateway": "10.1.2.1"}], [{"subnet": "2001:db8::/64"}]],
                   "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.1.2.254"}]},
          "dns": {"nameservers": ["10.1.2.1"]}}
HOST_LOCAL = {"cniVersion": "0.3.1", "name": "net1", "type": "host-local",
              "ipam": {"type": "host-local", "subnet": "10.1.2.0/24", "rangeStart": "10.1.2.5",
                       "resolvConf": "/etc/resolv.conf"}}
STATIC = {"cniVersion": "1.1.0", "name": "s", "type": "static",
          "ipam": {"type": "static", "addresses": [{"address": "10.10.0.1/24", "gateway": "10.10.0.254"},
                                                   {"address": "3ffe:ffff:0:01ff::1/64"}],
                   "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["8.8.8.8"]}}}
GC = {"cniVersion": "1.1.0", "name": "mynet", "type": "bridge",
      "cni.dev/valid-attachments": [{"containerID": "abc", "ifname": "eth0"}],
      "cni.dev/attachments": [{"containerID": "abc", "ifname": "eth0"}]}


def compact(value):
    return json.dumps(value, separators=(",", ":")).encode()


def write(target, data):
    directory = HERE / "corpus" / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)


def main():
    for index, version in enumerate(VERSIONS):
        for sample in (RESULT_1, RESULT_04, RESULT_02, RESULT_IPAM):
            write("FuzzResult", bytes([index]) + compact(dict(sample, cniVersion=version)))
            write("FuzzResult", bytes([index]) + compact({k: v for k, v in sample.items() if k != "cniVersion"}))
    for args in ["IP=10.1.2.3", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
                 "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1-2-3", "ip=10.1.2.3/24,10.1.2.4/24;gateway=10.1.2.1",
                 "MAC=0a:58:0a:01:02:05;IgnoreUnknown=true", "a=b=c;;", "IP", "=x", "FOO=bar"]:
        write("FuzzCNIArgs", args.encode())
    configs = [BRIDGE, HOST_LOCAL, STATIC, GC, dict(BRIDGE, prevResult=RESULT_1),
               dict(HOST_LOCAL, prevResult=RESULT_04), dict(BRIDGE, cniVersion="0.2.0", prevResult=RESULT_02)]
    for command in range(6):
        for config in configs:
            write("FuzzPlugin", bytes([command]) + compact(config))
        write("FuzzPlugin", bytes([command + 6]) + b"IP=10.1.2.3;IgnoreUnknown=1\n" + compact(BRIDGE))
    write("FuzzPlugin", bytes([0]) + b"")
    write("FuzzPlugin", bytes([0]) + b"[[[[[[[[[[]]]]]]]]]]")
    ranges = [HOST_LOCAL["ipam"], BRIDGE["ipam"],
              {"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/30"}, {"subnet": "10.0.0.4/30"}]]},
              {"type": "host-local", "ranges": [[{"subnet": "fd00::/120", "rangeStart": "fd00::10",
                                                  "rangeEnd": "fd00::20", "gateway": "fd00::1"}]]},
              {"type": "host-local", "subnet": "10.1.2.0/24", "ranges": [[{"subnet": "10.1.3.0/24"}]]}]
    for ipam in ranges:
        write("FuzzRange", compact(ipam))
    write("FuzzRange", b"IP=10.1.2.9,fd00::15\n" + compact(ranges[1]))
    write("FuzzRange", compact(dict(ranges[0], ranges=[[{"subnet": "10.9.0.0/29", "gateway": "10.9.0.6"}]])))
    excluding = {"type": "host-local", "ranges": [
        [{"subnet": "10.9.0.0/27", "rangeStart": "10.9.0.0", "rangeEnd": "10.9.0.31",
          "exclude": ["10.9.0.5", "10.9.0.8-10.9.0.12", "10.9.0.16/29"]}, {"subnet": "10.9.1.0/30"}],
        [{"subnet": "fd00::/120", "rangeEnd": "fd00::ff", "exclude": ["fd00::2-fd00::9", "fd00::80/121"]}]]}
    write("FuzzRange", compact(excluding))
    write("FuzzRange", b"IPFAMILY=ipv6;IPPOOL=fd00::/120\n" + compact(excluding))
    write("FuzzRange", b"IP=10.9.0.6\n" + compact(dict(excluding, subnet="10.8.0.0/24", exclude=["10.8.0.0/25"])))
    bridges = [BRIDGE, dict(BRIDGE, vlan=100, vlanTrunk=[{"id": 101}, {"minID": 200, "maxID": 210}]),
               dict(BRIDGE, ipam={}, disableContainerInterface=True, portIsolation=True, macspoofchk=True),
               dict(BRIDGE, ipMasqBackend="nftables", hairpinMode=True, mtu=9000, isDefaultGateway=True),
               {"cniVersion": "0.3.1", "name": "n", "type": "bridge"}]
    for config in bridges:
        write("FuzzBridgeConfig", compact(config))
    write("FuzzBridgeConfig", b"MAC=0a:58:0a:01:02:05;IgnoreUnknown=1\n" + compact(bridges[2]))
    ptp = {"cniVersion": "1.0.0", "name": "ptpnet", "type": "ptp", "ipMasq": True, "ipam": BRIDGE["ipam"]}
    for config in [ptp, dict(ptp, ipMasqBackend="nftables", mtu=1400, dns={"nameservers": ["10.1.2.1"]}),
                   dict(ptp, mtu=0, dns={}, ipam={"type": ""}), {"cniVersion": "0.3.1", "name": "n", "type": "ptp"}]:
        write("FuzzPTPConfig", compact(config))
    for config in [BRIDGE, HOST_LOCAL, RESULT_1]:
        write("FuzzJSON", json.dumps(config, indent=2).encode())
    for text in [b'[9007199254740993,18446744073709551615,-0,1e-7,0.1,1.5e3]', b'"\\"\\\\\\/\\b\\f\\n\\r\\t\\u0000"',
                 b'{"a":[true,false,null],"a":{},"\\ud83d\\ude00\xc3\xa9":""}',
                 b'{"cniVersion":"1.0.0","mtu":1500.0,"id":18446744073709551615,"small":-128,"ratio":0.5,'
                 b'"items":[{"name":"x","count":3,"flags":[true]}],"table":{"k":1},"any":[{}]}']:
        write("FuzzJSON", text)


main()
