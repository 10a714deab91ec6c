import CNetlink

/// Read-only questions to the kernel's nf_tables over NETLINK_NETFILTER: whether a chain exists
/// and which rules (handle, comment) a chain holds. Answers what `nft list` or `iptables-save`
/// would, without starting a program; iptables-nft keeps its tables in nf_tables too (family
/// ip / ip6), iptables-legacy does not.
public final class NFTables {
    /// nf_tables address families (NFPROTO_*).
    public enum Family: UInt8, Sendable {
        case inet = 1
        case ip = 2
        case bridge = 7
        case ip6 = 10
    }

    /// A rule as the ruleset shows it: its handle (for `delete rule ... handle N`) and the
    /// comment nft and iptables-nft keep in its user data.
    public struct Rule: Equatable, Sendable {
        public var handle: UInt64
        public var comment: String?
        /// The chain the rule jumps or goes to (`jump X`, iptables' `-j X` to a user chain).
        public var jumpTarget: String?
        /// Packet mark values the rule sets or compares: iptables-nft's `-j MARK --set-xmark V/M`
        /// (an xt MARK target) and `-m mark --mark V/M` (native `meta mark & M == V`) give V.
        public var marks: [UInt32]
        /// The rule's expressions as this module writes them; nil when one of them is of a kind
        /// it does not write (so the rule is not one of ours as written).
        public var expressions: [NFTables.Expression]?
        /// The text of an iptables-nft `-m comment --comment X` (an xt `comment` match: iptables-nft
        /// keeps it there, not in the user data `comment` reads).
        public var matchComment: String?
        /// The data of every `cmp` of the rule, whatever its other expressions: e.g. the address
        /// of iptables-nft's `-s`/`-d` (a payload load compared with it).
        public var comparedValues: [[UInt8]]
        /// The kernel's name of each of the rule's expressions, in order (`payload`, `cmp`,
        /// `match`, `fib`, ...), whatever their kind.
        public var expressionNames: [String]

        public init(
            handle: UInt64, comment: String?, jumpTarget: String? = nil, marks: [UInt32] = [],
            expressions: [NFTables.Expression]? = nil, matchComment: String? = nil, comparedValues: [[UInt8]] = [],
            expressionNames: [String] = []
        ) {
            self.handle = handle
            self.comment = comment
            self.jumpTarget = jumpTarget
            self.marks = marks
            self.expressions = expressions
            self.matchComment = matchComment
            self.comparedValues = comparedValues
            self.expressionNames = expressionNames
        }
    }

    let socket: NetlinkSocket

    /// Asks the calling thread's current network namespace.
    public init() throws(NetlinkError) {
        socket = try NetlinkSocket(netlinkProtocol: NETLINK_NETFILTER)
    }

    /// Asks `namespace` (the socket stays bound to it).
    public init(namespace: Namespace) throws {
        socket = try namespace.run { () throws(NetlinkError) in try NetlinkSocket(netlinkProtocol: NETLINK_NETFILTER) }
    }

    /// Whether `table` of `family` exists and holds `chain`.
    public func chainExists(family: Family, table: String, chain: String) throws(NetlinkError) -> Bool {
        do {
            try socket.execute(
                .nftGetChain(family: family, table: table, chain: chain),
                "get nftables chain \(family) \(table) \(chain)")
            return true
        } catch {
            // ENOENT for a missing table as for a missing chain.
            guard error.isNotFound else { throw error }
            return false
        }
    }

    /// The rules of `chain` in `table` of `family`, in ruleset order; none when the table or the
    /// chain does not exist.
    public func rules(family: Family, table: String, chain: String) throws(NetlinkError) -> [Rule] {
        try socket.dump(
            { .nftGetRules(family: family, table: table, chain: chain) },
            "list nftables rules of \(family) \(table) \(chain)",
            parse: Rule.init(message:))
    }
}

extension NFTables.Rule {
    /// libnftnl's user-data TLV type for a rule comment (NFTNL_UDATA_RULE_COMMENT, libnftnl/udata.h:
    /// not in the kernel headers, the kernel stores user data opaquely).
    static let commentUserDataType: UInt8 = 0

    /// A NFT_MSG_NEWRULE message (what a rule dump replies with); nil for anything else.
    init?(message: ReceivedMessage) {
        guard message.type == NetlinkMessage.nftType(NFT_MSG_NEWRULE.rawValue) else { return nil }
        let attributes = message.attributes(after: nfgenmsg.self)
        // The kernel sends the handle as a big-endian u64.
        guard let handle = attributes.first(Int(NFTA_RULE_HANDLE.rawValue)), handle.payload.count == 8 else {
            return nil
        }
        let expressions = attributes.first(Int(NFTA_RULE_EXPRESSIONS.rawValue))
        self.init(
            handle: UInt64(bigEndian: handle.payload.loadUnaligned(as: UInt64.self)),
            comment: attributes.first(Int(NFTA_RULE_USERDATA.rawValue)).flatMap {
                Self.comment(inUserData: $0.payload)
            },
            jumpTarget: expressions.flatMap { Self.jumpTarget(in: $0.nested) },
            marks: expressions.map { Self.marks(in: $0.nested) } ?? [],
            expressions: expressions.flatMap { Self.expressions(in: $0.nested) },
            matchComment: expressions.flatMap { Self.matchComment(in: $0.nested) },
            comparedValues: expressions.map { Self.comparedValues(in: $0.nested) } ?? [],
            expressionNames: expressions.map { Self.elements(in: $0.nested).map(\.name) } ?? [])
    }

    /// An xt `comment` match's text (`struct xt_comment_info`: the comment, NUL-padded).
    static func matchComment(in expressions: Attributes) -> String? {
        elements(in: expressions).lazy.compactMap { name, data in
            guard name == "match", let data, text(data.first(Int(NFTA_MATCH_NAME.rawValue))) == "comment" else {
                return nil
            }
            return text(data.first(Int(NFTA_MATCH_INFO.rawValue)))
        }.first
    }

    /// The data of each `cmp` expression, in order.
    static func comparedValues(in expressions: Attributes) -> [[UInt8]] {
        elements(in: expressions).compactMap { name, data in
            guard name == "cmp",
                let value = data?.first(Int(NFTA_CMP_DATA.rawValue))?.nested.first(Int(NFTA_DATA_VALUE.rawValue))
            else { return nil }
            return Array(value.payload)
        }
    }

    /// The rule's expressions as (name, data) pairs, in order.
    static func elements(in expressions: Attributes) -> [(name: String, data: Attributes?)] {
        var result: [(name: String, data: Attributes?)] = []
        for element in expressions where element.type == UInt16(NFTA_LIST_ELEM.rawValue) {
            let expression = element.nested
            guard let name = text(expression.first(Int(NFTA_EXPR_NAME.rawValue))) else { continue }
            result.append((name, expression.first(Int(NFTA_EXPR_DATA.rawValue))?.nested))
        }
        return result
    }

    /// A NUL-terminated string attribute.
    static func text(_ attribute: Attribute?) -> String? {
        attribute.map { String(decoding: $0.payload.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// The dump's expressions read back into `NFTables.Expression` (registers and attributes the
    /// kernel adds are not compared); nil at the first one `NFTablesBatch` does not write.
    static func expressions(in list: Attributes) -> [NFTables.Expression]? {
        func text(_ attribute: Attribute?) -> String? {
            attribute.map { String(decoding: $0.payload.prefix { $0 != 0 }, as: UTF8.self) }
        }
        func u32(_ attribute: Attribute?) -> UInt32? {
            guard let attribute, attribute.payload.count == 4 else { return nil }
            return UInt32(bigEndian: attribute.payload.loadUnaligned(as: UInt32.self))
        }
        func value(_ attribute: Attribute?) -> [UInt8]? {
            attribute?.nested.first(Int(NFTA_DATA_VALUE.rawValue)).map { Array($0.payload) }
        }
        var result: [NFTables.Expression] = []
        for element in list where element.type == UInt16(NFTA_LIST_ELEM.rawValue) {
            let expression = element.nested
            let data = expression.first(Int(NFTA_EXPR_DATA.rawValue))?.nested
            switch text(expression.first(Int(NFTA_EXPR_NAME.rawValue))) {
            case "meta":
                switch u32(data?.first(Int(NFTA_META_KEY.rawValue))) {
                case NFT_META_NFPROTO.rawValue: result.append(.loadProtocol)
                case NFT_META_L4PROTO.rawValue: result.append(.loadTransportProtocol)
                case NFT_META_IIFNAME.rawValue: result.append(.loadInputInterfaceName)
                case NFT_META_OIFNAME.rawValue: result.append(.loadOutputInterfaceName)
                default: return nil
                }
            case "ct":
                guard data?.first(Int(NFTA_CT_DIRECTION.rawValue)) == nil else { return nil }
                switch u32(data?.first(Int(NFTA_CT_KEY.rawValue))) {
                case NFT_CT_STATE.rawValue: result.append(.loadConntrackState)
                default: return nil
                }
            case "payload":
                guard let offset = u32(data?.first(Int(NFTA_PAYLOAD_OFFSET.rawValue))),
                    let length = u32(data?.first(Int(NFTA_PAYLOAD_LEN.rawValue)))
                else { return nil }
                switch u32(data?.first(Int(NFTA_PAYLOAD_BASE.rawValue))) {
                case NFT_PAYLOAD_NETWORK_HEADER.rawValue:
                    result.append(.loadNetworkHeader(offset: offset, length: length))
                case NFT_PAYLOAD_TRANSPORT_HEADER.rawValue:
                    result.append(.loadTransportHeader(offset: offset, length: length))
                default: return nil
                }
            case "bitwise":
                guard let mask = value(data?.first(Int(NFTA_BITWISE_MASK.rawValue))),
                    let xor = value(data?.first(Int(NFTA_BITWISE_XOR.rawValue)))
                else { return nil }
                result.append(.bitwise(mask: mask, xor: xor))
            case "cmp":
                guard let bytes = value(data?.first(Int(NFTA_CMP_DATA.rawValue))) else { return nil }
                switch u32(data?.first(Int(NFTA_CMP_OP.rawValue))) {
                case NFT_CMP_EQ.rawValue: result.append(.compare(equal: true, data: bytes))
                case NFT_CMP_NEQ.rawValue: result.append(.compare(equal: false, data: bytes))
                default: return nil
                }
            case "immediate":
                guard
                    let verdict = data?.first(Int(NFTA_IMMEDIATE_DATA.rawValue))?.nested
                        .first(Int(NFTA_DATA_VERDICT.rawValue))?.nested,
                    let code = u32(verdict.first(Int(NFTA_VERDICT_CODE.rawValue))).map(Int32.init(bitPattern:))
                else { return nil }
                let chain = text(verdict.first(Int(NFTA_VERDICT_CHAIN.rawValue)))
                switch (code, chain) {
                case (NF_ACCEPT, nil): result.append(.verdict(.accept))
                case (NF_DROP, nil): result.append(.verdict(.drop))
                case (NFT_RETURN.rawValue, nil): result.append(.verdict(.return))
                case (NFT_GOTO.rawValue, let chain?): result.append(.verdict(.goto(chain: chain)))
                case (NFT_JUMP.rawValue, let chain?): result.append(.verdict(.jump(chain: chain)))
                default: return nil
                }
            case "fib":
                // Only `fib daddr type` (what NFTablesBatch writes); other keys or flags are not ours.
                guard u32(data?.first(Int(NFTA_FIB_RESULT.rawValue))) == UInt32(NFT_FIB_RESULT_ADDRTYPE.rawValue),
                    u32(data?.first(Int(NFTA_FIB_FLAGS.rawValue))) == UInt32(NFTA_FIB_F_DADDR.rawValue)
                else { return nil }
                result.append(.loadDestinationAddressType)
            case "masq":
                result.append(.masquerade)
            default:
                return nil
            }
        }
        return result
    }

    /// The mark values of `marks`: an xt MARK target's info starts with the mark (host order);
    /// a `cmp` after `meta load mark` compares with it (host order).
    static func marks(in expressions: Attributes) -> [UInt32] {
        var marks: [UInt32] = []
        var loadedMark = false
        for (name, data) in elements(in: expressions) {
            guard let data else { continue }
            switch name {
            case "meta":
                let key = data.first(Int(NFTA_META_KEY.rawValue))
                loadedMark =
                    key.map {
                        $0.payload.count == 4
                            && UInt32(bigEndian: $0.payload.loadUnaligned(as: UInt32.self)) == NFT_META_MARK.rawValue
                    } ?? false
            case "cmp":
                if loadedMark,
                    let value = data.first(Int(NFTA_CMP_DATA.rawValue))?.nested.first(Int(NFTA_DATA_VALUE.rawValue)),
                    value.payload.count == 4
                {
                    marks.append(value.payload.loadUnaligned(as: UInt32.self))
                }
                loadedMark = false
            case "target":
                if text(data.first(Int(NFTA_TARGET_NAME.rawValue))) == "MARK",
                    let info = data.first(Int(NFTA_TARGET_INFO.rawValue)), info.payload.count >= 4
                {
                    marks.append(info.payload.loadUnaligned(as: UInt32.self))
                }
            default:
                break
            }
        }
        return marks
    }

    /// The chain named by an `immediate` verdict expression of the rule (jump or goto).
    static func jumpTarget(in expressions: Attributes) -> String? {
        elements(in: expressions).lazy.compactMap { name, data in
            guard name == "immediate",
                let verdict = data?.first(Int(NFTA_IMMEDIATE_DATA.rawValue))?.nested
                    .first(Int(NFTA_DATA_VERDICT.rawValue))
            else { return nil }
            return text(verdict.nested.first(Int(NFTA_VERDICT_CHAIN.rawValue)))
        }.first
    }

    /// The comment in a rule's user data: a sequence of (u8 type, u8 length, value) records, the
    /// comment's value a NUL-terminated string.
    static func comment(inUserData data: UnsafeRawBufferPointer) -> String? {
        var offset = 0
        while offset + 2 <= data.count {
            let type = data[offset]
            let length = Int(data[offset + 1])
            let start = offset + 2
            guard start + length <= data.count else { return nil }
            if type == commentUserDataType {
                let value = data[start..<(start + length)]
                let end = value.firstIndex(of: 0) ?? value.endIndex
                return String(decoding: data[start..<end], as: UTF8.self)
            }
            offset = start + length
        }
        return nil
    }
}

extension NetlinkMessage {
    /// An nfnetlink message type: the nf_tables subsystem in the high byte, the message below.
    static func nftType(_ message: UInt32) -> UInt16 { UInt16(NFNL_SUBSYS_NFTABLES << 8) | UInt16(message) }

    /// NFT_MSG_GETCHAIN for one chain: the kernel answers with the chain or ENOENT.
    static func nftGetChain(family: NFTables.Family, table: String, chain: String) -> NetlinkMessage {
        let message = NetlinkMessage(type: Int(nftType(NFT_MSG_GETCHAIN.rawValue)))
        message.append(header: nfgenmsg(nfgen_family: family.rawValue, version: UInt8(NFNETLINK_V0), res_id: 0))
        message.put(Int(NFTA_CHAIN_TABLE.rawValue), string: table)
        message.put(Int(NFTA_CHAIN_NAME.rawValue), string: chain)
        return message
    }

    /// A NFT_MSG_GETRULE dump the kernel filters to one chain of one table (empty when either is
    /// missing).
    static func nftGetRules(family: NFTables.Family, table: String, chain: String) -> NetlinkMessage {
        let message = NetlinkMessage(type: Int(nftType(NFT_MSG_GETRULE.rawValue)), flags: NLM_F_DUMP)
        message.append(header: nfgenmsg(nfgen_family: family.rawValue, version: UInt8(NFNETLINK_V0), res_id: 0))
        message.put(Int(NFTA_RULE_TABLE.rawValue), string: table)
        message.put(Int(NFTA_RULE_CHAIN.rawValue), string: chain)
        return message
    }
}
