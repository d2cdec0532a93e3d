/// The outcome of a call: gRPC's status codes (same numbers), a message a person can act on,
/// and optional details.
public struct RPCStatus: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: Code
    public var message: String
    public var details: [UInt8]

    public init(_ code: Code, _ message: String = "", details: [UInt8] = []) {
        self.code = code
        self.message = message
        self.details = details
    }

    /// Computed, not stored: a stored static is initialized lazily and checked on every use, and
    /// every call ends with this one.
    public static var ok: RPCStatus { RPCStatus(.ok) }

    public var description: String { message.isEmpty ? code.name : "\(code.name): \(message)" }

    /// The longest status message sent: messages may quote what a client sent, and a status
    /// too big for the client's frame limit would hide the real error behind another.
    public static let maxMessageBytes = 4096

    /// `message` cut to `maxMessageBytes`, saying how much was cut.
    public static func capped(_ message: String) -> String {
        message.utf8.count > maxMessageBytes ? cut(message, to: maxMessageBytes - 64) : message
    }

    /// Client input for quoting in a message: at most 200 bytes of it.
    public static func quote(_ input: String) -> String {
        input.utf8.count > 200 ? cut(input, to: 200) : input
    }

    /// The first `bytes` bytes of `s` (fewer, to end on a character boundary) and a note.
    private static func cut(_ s: String, to bytes: Int) -> String {
        let utf8 = s.utf8
        var end = utf8.index(utf8.startIndex, offsetBy: bytes)
        while end > utf8.startIndex, UTF8.isContinuation(utf8[end]) { end = utf8.index(before: end) }
        return String(s[..<end]) + "… (\(utf8.count) bytes, cut)"
    }

    /// A gRPC status code.
    public struct Code: RawRepresentable, Sendable, Hashable, CustomStringConvertible, CaseIterable {
        public var rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }

        public static let ok = Code(rawValue: 0)
        public static let cancelled = Code(rawValue: 1)
        public static let unknown = Code(rawValue: 2)
        public static let invalidArgument = Code(rawValue: 3)
        public static let deadlineExceeded = Code(rawValue: 4)
        public static let notFound = Code(rawValue: 5)
        public static let alreadyExists = Code(rawValue: 6)
        public static let permissionDenied = Code(rawValue: 7)
        public static let resourceExhausted = Code(rawValue: 8)
        public static let failedPrecondition = Code(rawValue: 9)
        public static let aborted = Code(rawValue: 10)
        public static let outOfRange = Code(rawValue: 11)
        public static let unimplemented = Code(rawValue: 12)
        public static let `internal` = Code(rawValue: 13)
        public static let unavailable = Code(rawValue: 14)
        public static let dataLoss = Code(rawValue: 15)
        public static let unauthenticated = Code(rawValue: 16)

        public static let allCases: [Code] = (0...16).map { Code(rawValue: $0) }

        private static let names = [
            "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
            "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
            "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
        ]

        /// The gRPC name, e.g. `NOT_FOUND`; codes outside 0...16 print as `CODE_<n>`.
        public var name: String {
            (0...16).contains(rawValue) ? Self.names[Int(rawValue)] : "CODE_\(rawValue)"
        }

        public init?(name: String) {
            guard let i = Self.names.firstIndex(of: name.uppercased()) else { return nil }
            self.init(rawValue: Int32(i))
        }

        public var description: String { name }
    }
}

/// Key/value pairs sent with a call (like HTTP headers). Keys are lower-cased.
public struct Metadata: Sendable, Hashable, Sequence, ExpressibleByDictionaryLiteral {
    public private(set) var entries: [(key: String, value: String)] = []

    public init() {}
    public init(dictionaryLiteral elements: (String, String)...) {
        for (k, v) in elements { add(k, v) }
    }

    public mutating func add(_ key: String, _ value: String) { entries.append((key.lowercased(), value)) }

    /// The first value for `key`.
    public subscript(key: String) -> String? {
        // Keys are stored lower-case and usually asked for so: lower-casing only when needed
        // saves making a string per lookup.
        if entries.isEmpty { return nil }
        if let hit = entries.first(where: { $0.key == key }) { return hit.value }
        // Only a key with an upper-case letter can differ from its stored form (any non-ASCII
        // byte may be part of one).
        guard Self.mayFold(key) else { return nil }
        let k = key.lowercased()
        return entries.first { $0.key == k }?.value
    }

    private static func mayFold(_ key: String) -> Bool {
        func check(_ bytes: some Sequence<UInt8>) -> Bool {
            for b in bytes where (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z")) || b >= 0x80 { return true }
            return false
        }
        // A native string's bytes are contiguous: a plain loop over them, not index by index.
        return key.utf8.withContiguousStorageIfAvailable { check($0) } ?? check(key.utf8)
    }

    public var isEmpty: Bool { entries.isEmpty }
    public func makeIterator() -> some IteratorProtocol<(key: String, value: String)> { entries.makeIterator() }

    public static func == (a: Metadata, b: Metadata) -> Bool {
        a.entries.count == b.entries.count && zip(a.entries, b.entries).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    }

    public func hash(into h: inout Hasher) {
        for e in entries { h.combine(e.key); h.combine(e.value) }
    }
}
