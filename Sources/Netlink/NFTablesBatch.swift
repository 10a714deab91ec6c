import CNetlink
import Glibc
import NetAddress

/// Writing nf_tables: a list of commands sent as one nfnetlink batch, which the kernel applies as
/// one transaction (all or nothing), encoded as `nft -f` encodes the same commands so that `nft`,
/// iptables-nft and knftables read the result exactly as if `nft` had written it.
extension NFTables {
    /// What a base chain hooks into.
    public struct Hook: Equatable, Sendable {
        /// The chain type: "nat", "filter", "route".
        public var type: String
        /// The netfilter hook number (NF_INET_*).
        public var number: UInt32
        public var priority: Int32
        /// The base chain's policy (`policy accept|drop`); nil leaves it out (the kernel's default,
        /// accept, for a new chain; an existing chain's is left as it is).
        public var policy: Policy? = nil

        /// A base chain's verdict for packets no rule decides on (NF_ACCEPT, NF_DROP).
        public enum Policy: UInt32, Sendable {
            case drop = 0
            case accept = 1
        }

        /// `type nat hook postrouting priority srcnat`.
        public static let natPostrouting = Hook(
            type: "nat", number: UInt32(NF_INET_POST_ROUTING.rawValue), priority: 100)
        /// `type nat hook prerouting priority dstnat`.
        public static let natPrerouting = Hook(
            type: "nat", number: UInt32(NF_INET_PRE_ROUTING.rawValue), priority: -100)
        /// `type nat hook output priority dstnat` (-100).
        public static let natOutput = Hook(type: "nat", number: UInt32(NF_INET_LOCAL_OUT.rawValue), priority: -100)
        /// `type filter hook forward priority filter ; policy accept ;` (priority 0).
        public static let filterForward = Hook(
            type: "filter", number: UInt32(NF_INET_FORWARD.rawValue), priority: 0, policy: .accept)
    }

    /// Where a rule goes when it matches.
    public enum Verdict: Equatable, Sendable {
        case accept
        case drop
        case `return`
        case goto(chain: String)
        case jump(chain: String)
    }

    /// One rule expression, with nft's register use: data in register 1, verdicts in the verdict
    /// register.
    public enum Expression: Equatable, Sendable {
        /// `meta load nfproto => reg 1`: the packet's layer-3 protocol (NFPROTO_*), one byte.
        case loadProtocol
        /// `payload load <length>b @ network header + <offset> => reg 1`.
        case loadNetworkHeader(offset: UInt32, length: UInt32)
        /// `bitwise reg 1 = (reg 1 & mask) ^ xor`, as long as `mask`.
        case bitwise(mask: [UInt8], xor: [UInt8])
        /// `cmp eq|neq reg 1 <data>`.
        case compare(equal: Bool, data: [UInt8])
        case verdict(Verdict)
        case masquerade
        /// `meta load l4proto => reg 1`: the transport protocol number, one byte.
        case loadTransportProtocol
        /// `payload load <length>b @ transport header + <offset> => reg 1`.
        case loadTransportHeader(offset: UInt32, length: UInt32)
        /// `fib daddr type => reg 1`: the routing type of the destination (RTN_*, a host-order u32).
        case loadDestinationAddressType
        /// `immediate reg <register> <data>`.
        case load(register: UInt32, data: [UInt8])
        /// `nat dnat ip|ip6 addr_min reg 1 proto_min reg 2`.
        case dnat(IPAddress.Family)
        /// `meta load iifname => reg 1`: the input interface's name, 16 bytes (IFNAMSIZ).
        case loadInputInterfaceName
        /// `meta load oifname => reg 1`: the output interface's name, 16 bytes (IFNAMSIZ).
        case loadOutputInterfaceName
        /// `ct load state => reg 1`: the conntrack state bits (NF_CT_STATE_*, a host-order u32).
        case loadConntrackState
    }

    /// Which interface of a forwarded packet a name match looks at.
    public enum InterfaceField: Sendable {
        /// `iifname`.
        case input
        /// `oifname`.
        case output
    }

    /// A layer-3 address field, by its offset in the IPv4 or IPv6 header.
    public enum AddressField: Sendable {
        case source, destination
    }

    /// One command of a transaction, as in an `nft -f` script.
    public enum Command: Equatable, Sendable, CustomStringConvertible {
        /// `add table`: created when missing, left as it is when present.
        case addTable(Family, name: String, comment: String?)
        /// `add chain`: created when missing, left as it is when present.
        case addChain(Family, table: String, name: String, comment: String?, hook: Hook?)
        /// `flush chain`: deletes all its rules.
        case flushChain(Family, table: String, chain: String)
        /// `add rule`: appended at the end of the chain.
        case addRule(Family, table: String, chain: String, expressions: [Expression], comment: String?)
        case deleteRule(Family, table: String, chain: String, handle: UInt64)

        public var description: String {
            switch self {
            case .addTable(let family, let name, _): "add table \(family) \(name)"
            case .addChain(let family, let table, let name, _, _): "add chain \(family) \(table) \(name)"
            case .flushChain(let family, let table, let chain): "flush chain \(family) \(table) \(chain)"
            case .addRule(let family, let table, let chain, _, _): "add rule \(family) \(table) \(chain)"
            case .deleteRule(let family, let table, let chain, let handle):
                "delete rule \(family) \(table) \(chain) handle \(handle)"
            }
        }
    }

    /// Applies `commands` as one transaction: all of them or, when one fails, none. The error
    /// names the first command the kernel refused.
    public func apply(_ commands: [Command]) throws(NetlinkError) {
        guard !commands.isEmpty else { return }
        let batch = try NFTablesBatch(commands)
        try socket.executeBatch(batch.bytes, sequences: batch.sequences) { sequence in
            batch.command(sequence: sequence).map { "nftables transaction: \($0)" } ?? "nftables transaction"
        }
    }
}

extension NFTables.Expression {
    /// `meta nfproto ipv4|ipv6`: the dependency nft puts before the first address match of an
    /// inet-family rule.
    public static func protocolIs(_ family: IPAddress.Family) -> [Self] {
        [.loadProtocol, .compare(equal: true, data: [UInt8(family == .v4 ? NFPROTO_IPV4 : NFPROTO_IPV6)])]
    }

    /// `iifname|oifname [!=] "<name>"`, as nft encodes an exact name: compared over all of
    /// IFNAMSIZ (16 bytes), the name NUL-padded (a longer name is cut: Linux has none).
    public static func interfaceName(_ field: NFTables.InterfaceField, is name: String, equal: Bool = true) -> [Self] {
        let bytes = Array(name.utf8.prefix(15))
        return [
            field == .input ? .loadInputInterfaceName : .loadOutputInterfaceName,
            .compare(equal: equal, data: bytes + Array(repeating: 0, count: 16 - bytes.count)),
        ]
    }

    /// `ct state established,related`: the state bits masked, compared with zero.
    public static let conntrackEstablishedOrRelated: [Self] = {
        // NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED), host order.
        let bits = withUnsafeBytes(of: UInt32(2 | 4)) { Array($0) }
        return [
            .loadConntrackState, .bitwise(mask: bits, xor: [0, 0, 0, 0]), .compare(equal: false, data: [0, 0, 0, 0]),
        ]
    }()

    /// `ip|ip6 saddr|daddr [!=] <prefix>`, as nft encodes it: a whole-byte prefix compares only
    /// its bytes (a full-length prefix is a plain address); any other (including /0) loads the
    /// whole address and masks it.
    public static func address(_ field: NFTables.AddressField, in prefix: IPPrefix, equal: Bool = true) -> [Self] {
        let isV4 = prefix.family == .v4
        let offset: UInt32 =
            switch (field, isV4) {
            case (.source, true): 12
            case (.destination, true): 16
            case (.source, false): 8
            case (.destination, false): 24
            }
        let network = prefix.networkAddress.bytes
        if prefix.length > 0 && prefix.length % 8 == 0 {
            let length = prefix.length / 8
            return [
                .loadNetworkHeader(offset: offset, length: UInt32(length)),
                .compare(equal: equal, data: Array(network.prefix(length))),
            ]
        }
        return [
            .loadNetworkHeader(offset: offset, length: UInt32(network.count)),
            .bitwise(mask: prefix.mask.bytes, xor: Array(repeating: 0, count: network.count)),
            .compare(equal: equal, data: network),
        ]
    }
}

/// The wire form of a transaction: BATCH_BEGIN, one message per command (each asking for an
/// acknowledgement, numbered from 1), BATCH_END.
struct NFTablesBatch {
    let commands: [NFTables.Command]
    let bytes: [UInt8]

    init(_ commands: [NFTables.Command]) throws(NetlinkError) {
        self.commands = commands
        var bytes = Self.batchMessage(type: NFNL_MSG_BATCH_BEGIN, sequence: 0)
        for (index, command) in commands.enumerated() {
            let message = NetlinkMessage.nftCommand(command)
            guard !message.overflowed else {
                throw NetlinkError(operation: "nftables transaction: \(command)", code: -NLE_MSGSIZE)
            }
            var encoded = message.bytes
            encoded.withUnsafeMutableBytes { raw in
                let flags = raw.loadUnaligned(fromByteOffset: 6, as: UInt16.self)
                raw.storeBytes(of: flags | UInt16(NLM_F_REQUEST | NLM_F_ACK), toByteOffset: 6, as: UInt16.self)
                raw.storeBytes(of: UInt32(index + 1), toByteOffset: 8, as: UInt32.self)
            }
            bytes += encoded
        }
        bytes += Self.batchMessage(type: NFNL_MSG_BATCH_END, sequence: UInt32(commands.count + 1))
        self.bytes = bytes
    }

    /// The sequence numbers that will be acknowledged, one per command.
    var sequences: ClosedRange<UInt32> { 1...UInt32(commands.count) }

    func command(sequence: UInt32) -> NFTables.Command? {
        sequences.contains(sequence) ? commands[Int(sequence) - 1] : nil
    }

    /// A batch delimiter: nfgenmsg with AF_UNSPEC and, in res_id (big-endian), the subsystem the
    /// batch is for.
    private static func batchMessage(type: Int32, sequence: UInt32) -> [UInt8] {
        var bytes: [UInt8] = []
        func append<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value) { bytes += $0 } }
        append(UInt32(netlinkHeaderSize + MemoryLayout<nfgenmsg>.size))
        append(UInt16(type))
        append(UInt16(NLM_F_REQUEST))
        append(sequence)
        append(UInt32(0))  // port id: the kernel fills in ours
        append(UInt8(AF_UNSPEC))
        append(UInt8(NFNETLINK_V0))
        append(UInt16(NFNL_SUBSYS_NFTABLES).bigEndian)
        return bytes
    }
}

extension NetlinkMessage {
    /// libnftnl's user-data TLV type for table, chain and rule comments (NFTNL_UDATA_*_COMMENT,
    /// all 0).
    private static let commentUserDataType: UInt8 = 0

    /// A comment as nft stores it in user data: one (type, length, NUL-terminated text) record.
    /// Longer comments than a record can hold are cut (nft refuses them; ours are short).
    static func commentUserData(_ comment: String) -> [UInt8] {
        let text = Array(comment.utf8.prefix(254)) + [0]
        return [commentUserDataType, UInt8(text.count)] + text
    }

    /// One command as nft 1.0 encodes it (attribute order included), without REQUEST/ACK flags
    /// and sequence number, which the batch sets.
    static func nftCommand(_ command: NFTables.Command) -> NetlinkMessage {
        func message(_ type: nf_tables_msg_types, _ family: NFTables.Family, flags: Int32 = 0) -> NetlinkMessage {
            let message = NetlinkMessage(type: Int(nftType(type.rawValue)), flags: flags)
            message.append(header: nfgenmsg(nfgen_family: family.rawValue, version: UInt8(NFNETLINK_V0), res_id: 0))
            return message
        }
        switch command {
        case .addTable(let family, let name, let comment):
            let table = message(NFT_MSG_NEWTABLE, family, flags: NLM_F_CREATE)
            table.put(Int(NFTA_TABLE_NAME.rawValue), string: name)
            table.put(Int(NFTA_TABLE_FLAGS.rawValue), u32: UInt32(0).bigEndian)
            if let comment { table.put(Int(NFTA_TABLE_USERDATA.rawValue), bytes: commentUserData(comment)) }
            return table
        case .addChain(let family, let tableName, let name, let comment, let hook):
            let chain = message(NFT_MSG_NEWCHAIN, family, flags: NLM_F_CREATE)
            chain.put(Int(NFTA_CHAIN_TABLE.rawValue), string: tableName)
            chain.put(Int(NFTA_CHAIN_NAME.rawValue), string: name)
            if let hook {
                chain.put(Int(NFTA_CHAIN_TYPE.rawValue), string: hook.type)
                if let policy = hook.policy {
                    chain.put(Int(NFTA_CHAIN_POLICY.rawValue), u32: policy.rawValue.bigEndian)
                }
                chain.nest(Int(NFTA_CHAIN_HOOK.rawValue)) {
                    chain.put(Int(NFTA_HOOK_HOOKNUM.rawValue), u32: hook.number.bigEndian)
                    chain.put(Int(NFTA_HOOK_PRIORITY.rawValue), u32: UInt32(bitPattern: hook.priority).bigEndian)
                }
            }
            if let comment { chain.put(Int(NFTA_CHAIN_USERDATA.rawValue), bytes: commentUserData(comment)) }
            return chain
        case .flushChain(let family, let table, let chain):
            let flush = message(NFT_MSG_DELRULE, family)
            flush.put(Int(NFTA_RULE_TABLE.rawValue), string: table)
            flush.put(Int(NFTA_RULE_CHAIN.rawValue), string: chain)
            return flush
        case .addRule(let family, let table, let chain, let expressions, let comment):
            let rule = message(NFT_MSG_NEWRULE, family, flags: NLM_F_CREATE | NLM_F_APPEND)
            rule.put(Int(NFTA_RULE_TABLE.rawValue), string: table)
            rule.put(Int(NFTA_RULE_CHAIN.rawValue), string: chain)
            rule.nest(Int(NFTA_RULE_EXPRESSIONS.rawValue)) {
                for expression in expressions {
                    rule.nest(Int(NFTA_LIST_ELEM.rawValue)) { rule.put(expression) }
                }
            }
            if let comment { rule.put(Int(NFTA_RULE_USERDATA.rawValue), bytes: commentUserData(comment)) }
            return rule
        case .deleteRule(let family, let table, let chain, let handle):
            let delete = message(NFT_MSG_DELRULE, family)
            delete.put(Int(NFTA_RULE_TABLE.rawValue), string: table)
            delete.put(Int(NFTA_RULE_CHAIN.rawValue), string: chain)
            delete.put(Int(NFTA_RULE_HANDLE.rawValue), u64: handle.bigEndian)
            return delete
        }
    }

    /// An expression's name and data (inside its NFTA_LIST_ELEM). Integers are big-endian.
    private func put(_ expression: NFTables.Expression) {
        let register = UInt32(NFT_REG_1.rawValue).bigEndian
        func name(_ text: String) { put(Int(NFTA_EXPR_NAME.rawValue), string: text) }
        func data(_ body: () -> Void) { nest(Int(NFTA_EXPR_DATA.rawValue), body) }
        func value(_ type: UInt32, _ bytes: [UInt8]) {
            nest(Int(type)) { put(Int(NFTA_DATA_VALUE.rawValue), bytes: bytes) }
        }
        func meta(_ key: UInt32) {
            name("meta")
            data {
                put(Int(NFTA_META_KEY.rawValue), u32: key.bigEndian)
                put(Int(NFTA_META_DREG.rawValue), u32: register)
            }
        }
        func payload(_ base: UInt32, offset: UInt32, length: UInt32) {
            name("payload")
            data {
                put(Int(NFTA_PAYLOAD_DREG.rawValue), u32: register)
                put(Int(NFTA_PAYLOAD_BASE.rawValue), u32: base.bigEndian)
                put(Int(NFTA_PAYLOAD_OFFSET.rawValue), u32: offset.bigEndian)
                put(Int(NFTA_PAYLOAD_LEN.rawValue), u32: length.bigEndian)
            }
        }
        switch expression {
        case .loadProtocol:
            meta(UInt32(NFT_META_NFPROTO.rawValue))
        case .loadNetworkHeader(let offset, let length):
            payload(UInt32(NFT_PAYLOAD_NETWORK_HEADER.rawValue), offset: offset, length: length)
        case .bitwise(let mask, let xor):
            name("bitwise")
            data {
                put(Int(NFTA_BITWISE_SREG.rawValue), u32: register)
                put(Int(NFTA_BITWISE_DREG.rawValue), u32: register)
                put(Int(NFTA_BITWISE_LEN.rawValue), u32: UInt32(mask.count).bigEndian)
                value(NFTA_BITWISE_MASK.rawValue, mask)
                value(NFTA_BITWISE_XOR.rawValue, xor)
            }
        case .compare(let equal, let bytes):
            name("cmp")
            data {
                put(Int(NFTA_CMP_SREG.rawValue), u32: register)
                put(Int(NFTA_CMP_OP.rawValue), u32: UInt32((equal ? NFT_CMP_EQ : NFT_CMP_NEQ).rawValue).bigEndian)
                value(NFTA_CMP_DATA.rawValue, bytes)
            }
        case .verdict(let verdict):
            name("immediate")
            data {
                put(Int(NFTA_IMMEDIATE_DREG.rawValue), u32: UInt32(NFT_REG_VERDICT.rawValue).bigEndian)
                nest(Int(NFTA_IMMEDIATE_DATA.rawValue)) {
                    nest(Int(NFTA_DATA_VERDICT.rawValue)) {
                        switch verdict {
                        case .accept:
                            put(Int(NFTA_VERDICT_CODE.rawValue), u32: UInt32(NF_ACCEPT).bigEndian)
                        case .drop:
                            put(Int(NFTA_VERDICT_CODE.rawValue), u32: UInt32(NF_DROP).bigEndian)
                        case .return:
                            put(Int(NFTA_VERDICT_CODE.rawValue), u32: UInt32(bitPattern: NFT_RETURN.rawValue).bigEndian)
                        case .goto(let chain):
                            put(Int(NFTA_VERDICT_CODE.rawValue), u32: UInt32(bitPattern: NFT_GOTO.rawValue).bigEndian)
                            put(Int(NFTA_VERDICT_CHAIN.rawValue), string: chain)
                        case .jump(let chain):
                            put(Int(NFTA_VERDICT_CODE.rawValue), u32: UInt32(bitPattern: NFT_JUMP.rawValue).bigEndian)
                            put(Int(NFTA_VERDICT_CHAIN.rawValue), string: chain)
                        }
                    }
                }
            }
        case .masquerade:
            name("masq")
            // An empty data nest, as nft sends it (libnl's nest_end would drop an empty nest).
            put(Int(NFTA_EXPR_DATA.rawValue) | Int(NLA_F_NESTED), bytes: [])
        case .loadTransportProtocol:
            meta(UInt32(NFT_META_L4PROTO.rawValue))
        case .loadTransportHeader(let offset, let length):
            payload(UInt32(NFT_PAYLOAD_TRANSPORT_HEADER.rawValue), offset: offset, length: length)
        case .loadDestinationAddressType:
            name("fib")
            data {
                put(Int(NFTA_FIB_DREG.rawValue), u32: register)
                put(Int(NFTA_FIB_RESULT.rawValue), u32: UInt32(NFT_FIB_RESULT_ADDRTYPE.rawValue).bigEndian)
                put(Int(NFTA_FIB_FLAGS.rawValue), u32: UInt32(NFTA_FIB_F_DADDR.rawValue).bigEndian)
            }
        case .load(let target, let bytes):
            name("immediate")
            data {
                put(Int(NFTA_IMMEDIATE_DREG.rawValue), u32: target.bigEndian)
                nest(Int(NFTA_IMMEDIATE_DATA.rawValue)) { put(Int(NFTA_DATA_VALUE.rawValue), bytes: bytes) }
            }
        case .loadInputInterfaceName:
            meta(UInt32(NFT_META_IIFNAME.rawValue))
        case .loadOutputInterfaceName:
            meta(UInt32(NFT_META_OIFNAME.rawValue))
        case .loadConntrackState:
            name("ct")
            data {
                put(Int(NFTA_CT_KEY.rawValue), u32: UInt32(NFT_CT_STATE.rawValue).bigEndian)
                put(Int(NFTA_CT_DREG.rawValue), u32: register)
            }
        case .dnat(let family):
            name("nat")
            data {
                put(Int(NFTA_NAT_TYPE.rawValue), u32: UInt32(NFT_NAT_DNAT.rawValue).bigEndian)
                put(Int(NFTA_NAT_FAMILY.rawValue), u32: UInt32(family == .v4 ? NFPROTO_IPV4 : NFPROTO_IPV6).bigEndian)
                put(Int(NFTA_NAT_REG_ADDR_MIN.rawValue), u32: UInt32(NFT_REG_1.rawValue).bigEndian)
                put(Int(NFTA_NAT_REG_PROTO_MIN.rawValue), u32: UInt32(NFT_REG_2.rawValue).bigEndian)
            }
        }
    }
}
