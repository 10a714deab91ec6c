import NetAddress
import Testing

@Suite struct AddressTests {
    @Test(arguments: [
        ("10.1.2.3", "10.1.2.3"), ("0.0.0.0", "0.0.0.0"), ("255.255.255.255", "255.255.255.255"),
        ("2001:db8::1", "2001:db8::1"), ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"), ("::", "::"),
        ("::1", "::1"), ("1::", "1::"), ("2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1"),
        ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"), ("2001:db8:1:2:3:4:0:5", "2001:db8:1:2:3:4:0:5"),
        ("::ffff:10.1.2.3", "10.1.2.3"), ("::102:304", "::102:304"), ("fe80::1:2", "fe80::1:2"),
    ])
    func roundTrip(input: String, canonical: String) {
        #expect(IPAddress(input)?.description == canonical)
    }

    @Test(arguments: [
        "", "1.2.3", "1.2.3.4.5", "01.2.3.4", "256.1.1.1", "1.2.3.4 ", "1::2::3", ":1::2", "1:2:3:4:5:6:7:8:9",
        "12345::", "g::1", "1.2.3.-4", "1:2:3:4:5:6:7:", "::1.2.3", "1.2.3.4/24",
    ])
    func rejects(input: String) {
        #expect(IPAddress(input) == nil)
    }

    @Test func arithmeticStopsAtTheEdgesOfTheSpace() {
        #expect(IPAddress("0.0.0.0")!.previous == nil)
        #expect(IPAddress("255.255.255.255")!.next == nil)
        #expect(IPAddress("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")!.next == nil)
        #expect(IPAddress("0.0.0.255")!.next?.description == "0.0.1.0")
        #expect(IPAddress("10.0.0.1")!.advanced(by: -2)?.description == "9.255.255.255")
    }

    @Test func prefixes() throws {
        let prefix = try #require(IPPrefix("10.1.2.5/24"))
        #expect(prefix.hasHostBits)
        #expect(prefix.network.description == "10.1.2.0/24")
        #expect(prefix.lastAddress.description == "10.1.2.255")
        #expect(prefix.mask.description == "255.255.255.0")
        #expect(prefix.contains(IPAddress("10.1.2.200")!))
        #expect(!prefix.contains(IPAddress("10.1.3.0")!))
        #expect(IPPrefix("0.0.0.0/0")!.size == 1 << 32)
        #expect(IPPrefix("::/0")!.lastAddress.description == "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
        #expect(IPPrefix("10.0.0.0/33") == nil)
        #expect(IPPrefix("10.0.0.0/024") == nil)
        #expect(IPPrefix("2001:db8::/64")!.overlaps(IPPrefix("2001:db8::1:0/112")!))
        #expect(!IPPrefix("10.0.0.0/8")!.overlaps(IPPrefix("2001:db8::/64")!))
    }

    @Test func macAddresses() {
        #expect(MACAddress("C2:11:22:33:44:55")?.description == "c2:11:22:33:44:55")
        #expect(MACAddress("c2-11-22-33-44-05")?.description == "c2:11:22:33:44:05")
        #expect(MACAddress("c2:11:22:33:44") == nil)
        #expect(MACAddress("c2:11:22:33:44:5g") == nil)
    }
}
