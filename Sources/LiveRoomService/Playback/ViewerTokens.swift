import Crypto
import Foundation
import LiveRoomDomain

/// Signed tokens that let one viewer play one room over HTTP until they expire. A token is
/// `PAYLOAD.SIGNATURE`, both base64url: the payload is JSON naming the room, the viewer (id,
/// name, phone) and the expiry; the signature is HMAC-SHA256 under a key the daemon keeps
/// beside `master.key` (`viewer-token.key`), so tokens survive restarts and need no storage.
public struct ViewerTokens: Sendable {
    public struct Claims: Codable, Equatable, Sendable {
        public var room: String
        public var viewer: String
        public var name: String
        public var phone: String
        public var expiresAtMs: Int64

        enum CodingKeys: String, CodingKey {
            case room = "r", viewer = "v", name = "n", phone = "p", expiresAtMs = "e"
        }
    }

    /// Why a token was refused, in words a viewer (or whoever embeds the player) can act on.
    public struct Refusal: Error, Equatable, CustomStringConvertible {
        public let description: String
    }

    private let keyBytes: Data

    public init(key: Data) { keyBytes = key }

    public func issue(_ claims: Claims) -> String {
        let payload = Self.base64url(try! JSONEncoder().encode(claims))  // five strings and an integer always encode
        return payload + "." + signature(payload)
    }

    /// The claims of a token for `room` that is intact and unexpired at `nowMs`.
    public func verify(_ token: String, room: String, nowMs: Int64) throws -> Claims {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2, token.utf8.count <= 2048 else { throw Refusal(description: "the viewer token is malformed") }
        let payload = String(parts[0])
        guard let given = Self.decode(String(parts[1])),
              HMAC<SHA256>.isValidAuthenticationCode(given, authenticating: Data(payload.utf8), using: SymmetricKey(data: keyBytes))
        else { throw Refusal(description: "the viewer token's signature is not valid (issued by another daemon, or altered)") }
        guard let json = Self.decode(payload), let claims = try? JSONDecoder().decode(Claims.self, from: json) else {
            throw Refusal(description: "the viewer token is malformed")
        }
        guard claims.room == room else { throw Refusal(description: "the viewer token is for room \(claims.room), not \(room)") }
        guard nowMs < claims.expiresAtMs else { throw Refusal(description: "the viewer token expired; ask for a new one") }
        return claims
    }

    private func signature(_ payload: String) -> String {
        Self.base64url(Data(HMAC<SHA256>.authenticationCode(for: Data(payload.utf8), using: SymmetricKey(data: keyBytes))))
    }

    static func base64url(_ data: Data) -> String {
        data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func decode(_ text: String) -> Data? {
        var s = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        guard s.allSatisfy(\.isASCII) else { return nil }
        while s.count % 4 != 0 { s += "=" }
        return Data(base64Encoded: s)
    }
}
