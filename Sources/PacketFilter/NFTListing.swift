import JSON

/// The parts of `nft -j list ...` this module reads: rules (chain, handle, comment, and the
/// `iifname` a rule matches) and chain names.
struct NFTListing: Equatable {
    struct Rule: Equatable {
        var chain: String
        var handle: Int
        var comment: String?
        /// The value of an `iifname == "<name>"` match, if the rule has one.
        var inputInterface: String?
    }

    var chains: [String] = []
    var rules: [Rule] = []

    init(chains: [String] = [], rules: [Rule] = []) {
        self.chains = chains
        self.rules = rules
    }

    init(json: [UInt8]) throws(DecodingFailure) {
        let document: Document
        do {
            document = try JSONCodec.decode(Document.self, from: json)
        } catch {
            throw DecodingFailure(message: "\(error)")
        }
        for item in document.nftables {
            if let chain = item.chain { chains.append(chain.name) }
            if let rule = item.rule {
                let interface = rule.expr?.lazy.compactMap { expression -> String? in
                    guard let match = expression.match, match.left.meta?.key == "iifname" else { return nil }
                    return match.right.text
                }.first
                rules.append(
                    Rule(chain: rule.chain, handle: rule.handle, comment: rule.comment, inputInterface: interface))
            }
        }
    }

    struct DecodingFailure: Error {
        var message: String
    }

    private struct Document: Decodable {
        var nftables: [Item]
    }

    private struct Item: Decodable {
        var chain: Chain?
        var rule: RuleObject?
    }

    private struct Chain: Decodable {
        var name: String
    }

    private struct RuleObject: Decodable {
        var chain: String
        var handle: Int
        var comment: String?
        var expr: [Expression]?
    }

    private struct Expression: Decodable {
        var match: Match?
    }

    private struct Match: Decodable {
        var left: Operand
        var right: Value
    }

    private struct Operand: Decodable {
        var meta: Meta?
    }

    private struct Meta: Decodable {
        var key: String
    }

    /// A match's right side: a string for names and addresses, an object for prefixes and sets.
    private struct Value: Decodable {
        var text: String?
        init(from decoder: any Decoder) throws {
            text = try? decoder.singleValueContainer().decode(String.self)
        }
    }
}
