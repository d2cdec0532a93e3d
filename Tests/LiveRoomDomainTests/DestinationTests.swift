import LiveRoomDomain
import LiveRoomMessages
import NIOCore
import XCTest

/// Backoff, a destination's status, outputs of a room, and relay versus direct ingest.
final class DestinationTests: XCTestCase {
    func testBackoffDoublesToItsCapWithJitterAndResets() {
        for _ in 0..<50 {
            var b = Backoff(baseMs: 1000, capMs: 8000)
            for step: Int64 in [1000, 2000, 4000, 8000, 8000, 8000] {
                let wait = b.next()
                XCTAssertGreaterThanOrEqual(wait, step / 2, "at least half of the step")
                XCTAssertLessThanOrEqual(wait, step, "at most the step, capped")
            }
            b.reset()
            XCTAssertLessThanOrEqual(b.next(), 1000, "back to the first step")
        }
        var many = Backoff(baseMs: 1000, capMs: 30_000)
        for _ in 0..<100 { XCTAssertLessThanOrEqual(many.next(), 30_000, "no overflow after many failures") }
        var spread: Set<Int64> = []
        for _ in 0..<20 {
            var b = Backoff()
            spread.insert(b.next())
        }
        XCTAssertGreaterThan(spread.count, 1, "jitter: destinations failing together do not retry in step")
    }

    func testStatusCountsReconnectsAndBitrate() {
        var s = DestinationStatus()
        s.connecting()
        XCTAssertEqual(s.reconnects, 0, "the first connection is not a reconnect")
        s.live(nowMs: 1000)
        s.sent(250_000, nowMs: 2000)
        s.sent(250_000, nowMs: 3000)
        XCTAssertEqual(s.bytesSent, 500_000)
        XCTAssertEqual(s.bitrateBps, 2_000_000, "500 kB in 2 s")
        s.retrying("boom", retryAtMs: 5000)
        XCTAssertEqual(s.state, .retrying)
        XCTAssertEqual(s.bitrateBps, 0)
        s.connecting()
        XCTAssertEqual(s.reconnects, 1)
        XCTAssertEqual(s.nextAttemptAtMs, 0)
        s.failed("wrong key")
        XCTAssertEqual(s.state, .failed)
        XCTAssertEqual(s.lastError, "wrong key")
    }

    func testOutputsGetTheStreamButAreNotViewers() async throws {
        let registry = RoomRegistry(store: MemoryStore(), platforms: [], connectors: [:], builtin: BuiltinEndpoints(), clock: AdjustableClock())
        let record = try await registry.create(RoomRegistryTests.request("self")).room
        let room = try await registry.room(record.id)
        let session = try await room.beginPublish(key: record.streamKey, publisherId: "p")
        var header = MediaChunk()
        header.header = true
        header.payload = ByteBuffer(bytes: [1])
        var key = MediaChunk()
        key.keyframe = true
        key.payload = ByteBuffer(bytes: [2])
        try await room.publish(header, session: session)
        try await room.publish(key, session: session)
        let output = try await room.attachOutput()
        var got: [UInt8] = []
        while case .item(.chunk(let c)) = output.queue.poll() { got += c.payload.readableBytesView }
        XCTAssertEqual(got, [1, 2], "the header and the current group of pictures first")
        let stats = try await room.viewerStats()
        XCTAssertEqual(stats.onlineNow, 0)
        XCTAssertEqual(stats.distinctViewers, 0)
        await room.leave(output.token)
        _ = try await room.close()
        do {
            _ = try await room.attachOutput()
            XCTFail("an ended room takes no outputs")
        } catch let e as RoomError {
            XCTAssertEqual(e.code, .failedPrecondition)
        }
    }

    func testRelayHandsOutOurKeyAndDirectThePlatforms() async throws {
        let connector = FakeConnector()
        var fake = PlatformSettings(id: "fake", displayName: "Fake")
        fake.keyTTLMs = 3_600_000
        let registry = RoomRegistry(store: MemoryStore(), platforms: [fake], connectors: ["fake": connector], builtin: BuiltinEndpoints(),
                                    clock: AdjustableClock())
        let relay = try await registry.create(RoomRegistryTests.request("fake", requestId: "r")).room
        XCTAssertEqual(relay.ingest, .relay, "relay is the default")
        XCTAssertEqual(relay.pushServer, "rtmp://127.0.0.1:1935/live")
        XCTAssertTrue(relay.streamKey.hasPrefix("sk_"))
        XCTAssertEqual(relay.platformPushServer, "rtmp://push.fake/live")
        XCTAssertEqual(relay.platformStreamKey, "fake-key-0")
        // Our key publishes; rotation renews both keys.
        let room = try await registry.room(relay.id)
        _ = try await room.beginPublish(key: relay.streamKey, publisherId: "p")
        let rotated = try await room.rotateKey()
        XCTAssertNotEqual(rotated.streamKey, relay.streamKey)
        XCTAssertEqual(rotated.platformStreamKey, "fake-key-1")

        var ask = RoomRegistryTests.request("fake", requestId: "d")
        ask.ingest = .direct
        let direct = try await registry.create(ask).room
        XCTAssertEqual(direct.pushServer, "rtmp://push.fake/live")
        XCTAssertEqual(direct.streamKey, "fake-key-0")
        do {
            _ = try await registry.room(direct.id).beginPublish(key: direct.streamKey, publisherId: "p")
            XCTFail("a direct room's broadcaster publishes to the platform")
        } catch let e as RoomError {
            XCTAssertEqual(e.code, .failedPrecondition)
            XCTAssertTrue(e.message.contains("rtmp://push.fake/live"), e.message)
        }
        // The mirror's session needs no key.
        _ = try await registry.room(direct.id).beginMirror(publisherId: "mirror")

        var selfDirect = RoomRegistryTests.request("self")
        selfDirect.ingest = .direct
        do {
            _ = try await registry.create(selfDirect)
            XCTFail("direct ingest on the built-in platform")
        } catch let e as RoomError {
            XCTAssertEqual(e.code, .invalidArgument)
        }
    }
}
