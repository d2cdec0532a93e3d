/// Stream keys: 192 bits from the system's cryptographically secure generator, URL-safe.
public enum StreamKey {
    /// `sk_` + 32 base64url characters (24 random bytes).
    public static func generate() -> String {
        var rng = SystemRandomNumberGenerator()  // getrandom(2) on Linux
        let bytes = (0..<24).map { _ in UInt8.random(in: 0...255, using: &rng) }
        return "sk_" + base64URL(bytes)
    }

    /// An opaque random id with a prefix, e.g. `rm_…` for rooms.
    public static func identifier(prefix: String, bytes count: Int = 12) -> String {
        var rng = SystemRandomNumberGenerator()
        return prefix + base64URL((0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) })
    }

    static func base64URL(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        var out = ""
        var i = 0
        while i + 3 <= bytes.count {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            for shift in stride(from: 18, through: 0, by: -6) { out.append(alphabet[Int((n >> UInt32(shift)) & 63)]) }
            i += 3
        }
        precondition(i == bytes.count, "use a multiple of 3 bytes")
        return out
    }

    /// Compares without returning early, so timing does not reveal how much of a key matched.
    public static func equal(_ a: String, _ b: String) -> Bool {
        var a = a, b = b
        return a.withUTF8 { x in
            b.withUTF8 { y in
                // Lengths compared whole: a truncated difference could hide NUL padding.
                var diff: UInt8 = x.count == y.count ? 0 : 1
                for i in 0..<max(x.count, y.count) {
                    diff |= (i < x.count ? x[i] : 0) ^ (i < y.count ? y[i] : 0)
                }
                return diff == 0
            }
        }
    }

    /// A form safe for logs: never the key itself.
    public static func redacted(_ key: String) -> String { key.isEmpty ? "(none)" : "sk_…(\(key.count) chars)" }
}
