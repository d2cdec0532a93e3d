import Foundation
@testable import LiveRoomService
import XCTest

/// Viewer tokens: what is signed is what is read back, and every other token is refused with a reason.
final class ViewerTokenTests: XCTestCase {
    let tokens = ViewerTokens(key: Data(repeating: 7, count: 32))
    let claims = ViewerTokens.Claims(room: "rm_a", viewer: "v1", name: "Ann Lee", phone: "138", expiresAtMs: 10_000)

    func refusal(_ token: String, room: String = "rm_a", nowMs: Int64 = 5000) -> String {
        do {
            _ = try tokens.verify(token, room: room, nowMs: nowMs)
            return "accepted"
        } catch {
            return "\(error)"
        }
    }

    func testATokenReadsBackItsClaimsUntilItExpires() throws {
        let token = tokens.issue(claims)
        XCTAssertFalse(token.contains("+") || token.contains("/") || token.contains("="), "URL-safe as it is")
        XCTAssertEqual(try tokens.verify(token, room: "rm_a", nowMs: 9999), claims)
        XCTAssertTrue(refusal(token, nowMs: 10_000).contains("expired"))
    }

    func testAlteredForeignMalformedAndMisdirectedTokensAreRefused() {
        let token = tokens.issue(claims)
        let parts = token.split(separator: ".").map(String.init)
        // The same claims with another viewer, under the old signature.
        var other = claims
        other.viewer = "admin"
        let forged = tokens.issue(other).split(separator: ".")[0] + "." + parts[1]
        XCTAssertTrue(refusal(String(forged)).contains("signature"))
        XCTAssertTrue(refusal(ViewerTokens(key: Data(repeating: 8, count: 32)).issue(claims)).contains("signature"), "another daemon's key")
        XCTAssertTrue(refusal("nonsense").contains("malformed"))
        XCTAssertTrue(refusal("a.b.c").contains("malformed"))
        XCTAssertTrue(refusal(String(repeating: "x", count: 3000) + ".y").contains("malformed"))
        XCTAssertTrue(refusal(token, room: "rm_b").contains("for room rm_a"))
    }
}
