import LiveRoomDomain
import LiveRoomMessages
import Foundation
import XCTest

/// Viewers fed from elsewhere (HTTP players): counted like Watch viewers, told when the room closes.
final class PresenceTests: XCTestCase {
    func testAViewerWithoutAQueueIsCountedAndToldWhenTheRoomCloses() async throws {
        let clock = AdjustableClock()
        let registry = RoomRegistry(store: MemoryStore(), platforms: [], connectors: [:], builtin: BuiltinEndpoints(), clock: clock)
        let record = try await registry.create(RoomRegistryTests.request("self")).room
        let room = try await registry.room(record.id)
        let told = Counter()
        let token = try await room.enter(viewerId: "web-1", name: "Ann", phone: "1", onEnd: { told.add() })
        var stats = try await room.viewerStats()
        XCTAssertEqual(stats.onlineNow, 1)
        XCTAssertEqual(stats.distinctViewers, 1)
        _ = clock.advance(byMs: 60_000)
        await room.leave(token)
        XCTAssertEqual(told.value, 1, "leaving ends it once")
        let page = try await room.viewerPage(offset: 0, limit: 10, onlineOnly: false).viewers
        XCTAssertEqual(page.first?.name, "Ann")
        XCTAssertEqual(page.first?.online, false)
        XCTAssertEqual(page.first?.timesLeft, 1)
        XCTAssertEqual(page.first?.watchMs, 60_000)

        _ = try await room.enter(viewerId: "web-2", name: "", phone: "", onEnd: { told.add() })
        _ = try await room.close()
        XCTAssertEqual(told.value, 2, "closing the room ends the viewer")
        stats = try await room.viewerStats()
        XCTAssertEqual(stats.onlineNow, 0)
        do {
            _ = try await room.enter(viewerId: "web-3", name: "", phone: "", onEnd: {})
            XCTFail("an ended room takes no viewers")
        } catch let e as RoomError {
            XCTAssertEqual(e.code, .failedPrecondition)
        }
        do {
            _ = try await registry.room(record.id).enter(viewerId: "", name: "", phone: "", onEnd: {})
            XCTFail("a viewer id is required")
        } catch let e as RoomError {
            XCTAssertEqual(e.code, .invalidArgument)
        }
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func add() { lock.withLock { n += 1 } }
    var value: Int { lock.withLock { n } }
}
