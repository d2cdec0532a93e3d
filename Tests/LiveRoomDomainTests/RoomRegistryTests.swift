import LiveRoomMessages
import Synchronization
import XCTest

@testable import LiveRoomDomain

/// An in-memory store that can be told to fail writes.
final class MemoryStore: RoomStore, ViewerStore, AudienceStore {
    let reports = Mutex<[String: StoredReport]>([:])

    /// Commit marks: one per insert, as SQLite's row ids.
    let marks = Mutex<Int64>(0)
    /// Runs between a load's read and its return (tests race applies against it).
    let afterRead = Mutex<(@Sendable () async -> Void)?>(nil)

    func insertReports(_ batch: [StoredReport]) async throws -> Int64 {
        try check()
        return reports.withLock { all in
            for r in batch { all["\(r.platformId)/\(r.connectorId)/\(r.sequence)"] = r }
            return marks.withLock { $0 += 1; return $0 }
        }
    }

    func loadReports(roomId: String) async throws -> StoredReports {
        let (found, mark) = reports.withLock { all in
            (all.values.filter { $0.roomId == roomId }.sorted { $0.receivedAtMs < $1.receivedAtMs }, marks.withLock { $0 })
        }
        if let hook = afterRead.withLock({ $0 }) { await hook() }
        return StoredReports(reports: found, mark: mark)
    }

    let requests = Mutex<[String: String]>([:])

    func reserveRoomId(requestId: String, candidate: String) async throws -> String {
        try check()
        return requests.withLock { r in
            if let id = r[requestId] { return id }
            r[requestId] = candidate
            return candidate
        }
    }

    func sequences(platformId: String, connectorId: String, from: UInt64) async throws -> (seen: Set<UInt64>, highest: UInt64?) {
        let mine = reports.withLock { $0.values.filter { $0.platformId == platformId && $0.connectorId == connectorId }.map(\.sequence) }
        return (Set(mine.filter { $0 >= from }), mine.max())
    }

    let viewerRows = Mutex<[String: [String: ViewerRecord]]>([:])
    let peaks = Mutex<[String: Int64]>([:])

    func saveViewers(roomId: String, peakConcurrent: Int64, _ viewers: [ViewerRecord]) async throws {
        try check()
        viewerRows.withLock { for v in viewers { $0[roomId, default: [:]][v.viewerId] = v } }
        peaks.withLock { $0[roomId] = max($0[roomId] ?? 0, peakConcurrent) }
    }

    func loadViewers(roomId: String) async throws -> (peakConcurrent: Int64, viewers: [ViewerRecord]) {
        (peaks.withLock { $0[roomId] ?? 0 }, viewerRows.withLock { Array(($0[roomId] ?? [:]).values) })
    }

    func closeOutOnlineViewers() async throws -> Int { 0 }

    func touchOnlineViewers(roomId: String, atMs: Int64) async throws {
        try check()
        viewerRows.withLock { rows in
            for (id, v) in rows[roomId] ?? [:] where v.online { rows[roomId]?[id]?.lastSeenMs = atMs }
        }
    }

    let rooms = Mutex<[String: RoomRecord]>([:])
    let failWrites = Mutex(false)
    let history = Mutex<[(String, RoomStatus, String)]>([])

    private func check() throws {
        if failWrites.withLock({ $0 }) { throw RoomError(.unavailable, "the store cannot be written: disk full") }
    }

    /// Fails only inserts of rooms: the write after the platform made its room.
    let failRoomInserts = Mutex(false)

    func insert(_ room: RoomRecord) async throws {
        try check()
        if failRoomInserts.withLock({ $0 }) { throw RoomError(.unavailable, "the store cannot be written: disk full") }
        rooms.withLock { $0[room.id] = room }
    }

    func update(_ room: RoomRecord, previous: RoomRecord, reason: String) async throws {
        try check()
        rooms.withLock { $0[room.id] = room }
        if room.status != previous.status { history.withLock { $0.append((room.id, room.status, reason)) } }
    }

    func load(id: String) async throws -> RoomRecord? { rooms.withLock { $0[id] } }
    func find(requestId: String) async throws -> RoomRecord? { rooms.withLock { $0.values.first { $0.requestId == requestId } } }
    func list(_ query: RoomQuery) async throws -> [RoomRecord] {
        rooms.withLock { Array($0.values) }.filter { query.platformId == nil || $0.platformId == query.platformId }
    }
    func delete(id: String) async throws { rooms.withLock { $0[id] = nil } }
    func openRooms(ingest: Ingest) async throws -> [String] {
        rooms.withLock { $0.values.filter { $0.ingest == ingest && $0.status != .ended }.map(\.id) }
    }

    func roomId(forStreamKey key: String) async throws -> String? {
        rooms.withLock { $0.values.first { $0.streamKey == key }?.id }
    }
}

/// A connector that records calls and can fail or stall.
final class FakeConnector: PlatformClient {
    let created = Mutex(0)
    let closedRequests = Mutex<[String]>([])
    let failure = Mutex<RoomError?>(nil)
    let keyCounter = Mutex(0)

    func createRoom(_ request: CreatePlatformRoomRequest) async throws -> CreatePlatformRoomResponse {
        if let f = failure.withLock({ $0 }) { throw f }
        created.withLock { $0 += 1 }
        var r = CreatePlatformRoomResponse()
        r.platformRoomId = "p-\(request.requestId)"
        r.pushServer = "rtmp://push.fake/live"
        r.streamKey = "fake-key-0"
        r.keyExpiresAtMs = 0
        r.playUrl = "https://fake/live/\(request.requestId)"
        return r
    }

    /// How long each rotation call takes before answering, in call order (then none).
    let rotationDelays = Mutex<[Duration]>([])

    func rotateKey(platformRoomId: String) async throws -> RotatePlatformKeyResponse {
        if let f = failure.withLock({ $0 }) { throw f }
        var r = RotatePlatformKeyResponse()
        r.streamKey = "fake-key-\(keyCounter.withLock { $0 += 1; return $0 })"
        let delay = rotationDelays.withLock { $0.isEmpty ? Duration.zero : $0.removeFirst() }
        if delay > .zero { try await Task.sleep(for: delay) }
        return r
    }

    func status(platformRoomId: String) async throws -> GetPlatformRoomStatusResponse {
        var r = GetPlatformRoomStatusResponse()
        r.status = .live
        return r
    }

    func close(platformRoomId: String, requestId: String) async throws {
        closedRequests.withLock { $0.append(requestId) }
    }

    func probe() async -> String? { nil }
}

final class RoomRegistryTests: XCTestCase {
    let clock = AdjustableClock()
    let store = MemoryStore()
    let connector = FakeConnector()

    func makeRegistry() -> RoomRegistry {
        var fake = PlatformSettings(id: "fake", displayName: "Fake")
        fake.supportsMeeting = false
        fake.keyTTLMs = 3_600_000
        return RoomRegistry(store: store, platforms: [fake], connectors: ["fake": connector], builtin: BuiltinEndpoints(), clock: clock)
    }

    func request(_ platform: String, _ title: String = "Launch", requestId: String = "") -> CreateRoomRequest {
        Self.request(platform, title, requestId: requestId)
    }

    static func request(_ platform: String, _ title: String = "Launch", requestId: String = "", ingest: Ingest = .unspecified) -> CreateRoomRequest {
        var r = CreateRoomRequest()
        r.ingest = ingest
        r.kind = .live
        r.platformId = platform
        r.title = title
        r.requestId = requestId
        return r
    }

    func testBuiltinRoomGetsKeyPushServerAndPlayURL() async throws {
        let registry = makeRegistry()
        let (room, created) = try await registry.create(request("self"))
        XCTAssertTrue(created)
        XCTAssertEqual(room.pushServer, "rtmp://127.0.0.1:1935/live")
        XCTAssertEqual(room.playURL, "liveroom://127.0.0.1/rooms/\(room.id)")
        XCTAssertEqual(room.playMode, .embedded)
        XCTAssertEqual(room.kind, .live)
        XCTAssertEqual(room.status, .notStarted)
        XCTAssertTrue(room.streamKey.hasPrefix("sk_"))
        XCTAssertEqual(room.streamKey.count, 3 + 32, "24 random bytes, base64url")
        XCTAssertTrue(room.streamKey.dropFirst(3).allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" })
        XCTAssertEqual(room.keyExpiresAtMs, room.createdAtMs + 24 * 3_600_000)
        let other = try await registry.create(request("self")).room
        XCTAssertNotEqual(other.streamKey, room.streamKey)
    }

    func testSameRequestIdReturnsTheSameRoomEvenConcurrently() async throws {
        let registry = makeRegistry()
        let results = try await withThrowingTaskGroup(of: (RoomRecord, Bool).self) { group in
            for _ in 0..<8 { group.addTask { try await registry.create(Self.request("fake", requestId: "same")) } }
            var out: [(RoomRecord, Bool)] = []
            for try await r in group { out.append(r) }
            return out
        }
        XCTAssertEqual(Set(results.map(\.0.id)).count, 1)
        XCTAssertEqual(results.filter(\.1).count, 1, "exactly one call created it")
        XCTAssertEqual(connector.created.withLock { $0 }, 1, "the platform saw one create")
        XCTAssertEqual(store.rooms.withLock { $0.count }, 1)
    }

    func testValidation() async throws {
        let registry = makeRegistry()
        await assertRoomError(.invalidArgument, containing: "known platforms: self, fake") { try await registry.create(self.request("nope")) }
        await assertRoomError(.invalidArgument, containing: "title is required") { try await registry.create(self.request("self", " ")) }
        var meeting = request("fake")
        meeting.kind = .meeting
        await assertRoomError(.invalidArgument, containing: "does not support meeting") { try await registry.create(meeting) }
        var external = request("self")
        external.playMode = .external
        await assertRoomError(.invalidArgument, containing: "embedded") { try await registry.create(external) }
        var noKind = request("self")
        noKind.kind = .unspecified
        await assertRoomError(.invalidArgument, containing: "kind is required") { try await registry.create(noKind) }
        var longRequest = request("self")
        longRequest.requestId = String(repeating: "r", count: 129)
        await assertRoomError(.invalidArgument, containing: "request_id is 129 bytes") { try await registry.create(longRequest) }
    }

    func testAnExternalCreateRetriedAfterACrashNamesTheRoomTheFirstAttemptReserved() async throws {
        // The first attempt reserved its id and reached the platform, then the daemon died
        // before storing the room.
        let reserved = try await store.reserveRoomId(requestId: "r-crash", candidate: "rm_first_attempt")
        let room = try await makeRegistry().create(request("fake", requestId: "r-crash")).room
        XCTAssertEqual(room.id, reserved, "the platform's room (made for the first attempt) names this id")
        XCTAssertEqual(room.platformRoomId, "p-r-crash")
    }

    func testConnectorFailureLeavesNothingAndUndoesOnThePlatform() async throws {
        let registry = makeRegistry()
        connector.failure.withLock { $0 = RoomError(.deadlineExceeded, "platform fake did not answer within 5 ms") }
        await assertRoomError(.deadlineExceeded, containing: "did not answer") { try await registry.create(self.request("fake", requestId: "r1")) }
        XCTAssertEqual(store.rooms.withLock { $0.count }, 0)
        try await waitUntil { self.connector.closedRequests.withLock { $0 } == ["r1"] }
    }

    func testStoreFailureUndoesThePlatformRoom() async throws {
        let registry = makeRegistry()
        store.failRoomInserts.withLock { $0 = true }
        await assertRoomError(.unavailable, containing: "disk full") { try await registry.create(self.request("fake", requestId: "r2")) }
        try await waitUntil { self.connector.closedRequests.withLock { $0 } == ["r2"] }
        // A store that takes no writes at all fails before the platform is asked.
        store.failWrites.withLock { $0 = true }
        await assertRoomError(.unavailable, containing: "disk full") { try await registry.create(self.request("fake", requestId: "r3")) }
        XCTAssertEqual(connector.created.withLock { $0 }, 1)
    }

    func testKeyExpiryAndRotation() async throws {
        let registry = makeRegistry()
        let room = try await registry.create(request("self")).room
        let actor = try await registry.room(room.id)
        try await actor.authorizePublish(key: room.streamKey)
        await assertRoomError(.permissionDenied, containing: "wrong stream key") { try await actor.authorizePublish(key: room.streamKey + "x") }
        clock.advance(byMs: 24 * 3_600_000)
        let expired = await actor.snapshot().keyStatus(nowMs: clock.nowMs())
        XCTAssertEqual(expired, .expired)
        await assertRoomError(.permissionDenied, containing: "expired") { try await actor.authorizePublish(key: room.streamKey) }
        let rotated = try await actor.rotateKey()
        XCTAssertNotEqual(rotated.streamKey, room.streamKey)
        XCTAssertEqual(rotated.keyStatus(nowMs: clock.nowMs()), .valid)
        await assertRoomError(.permissionDenied, containing: "wrong stream key") { try await actor.authorizePublish(key: room.streamKey) }
        try await actor.authorizePublish(key: rotated.streamKey)
    }

    func testExternalRotationGoesThroughTheConnectorAndUsesThePlatformTTL() async throws {
        let registry = makeRegistry()
        let room = try await registry.create(Self.request("fake", ingest: .direct)).room
        XCTAssertEqual(room.keyExpiresAtMs, room.createdAtMs + 3_600_000, "the platform gave no expiry: its configured TTL applies")
        let rotated = try await registry.room(room.id).rotateKey()
        XCTAssertEqual(rotated.streamKey, "fake-key-1")
    }

    func testConcurrentRotationsKeepThePlatformsLatestKey() async throws {
        let registry = makeRegistry()
        let room = try await registry.create(Self.request("fake", ingest: .direct)).room
        let actor = try await registry.room(room.id)
        // The first rotation is slow at the platform; the second, started meanwhile, is quick.
        connector.rotationDelays.withLock { $0 = [.milliseconds(300), .zero] }
        let slow = Task { try await actor.rotateKey() }
        try await Task.sleep(for: .milliseconds(50))
        let quick = try await actor.rotateKey()
        _ = try await slow.value
        let issued = connector.keyCounter.withLock { $0 }
        XCTAssertEqual(issued, 2)
        XCTAssertEqual(quick.streamKey, "fake-key-2", "the second rotation ran after the first")
        let stored = await actor.snapshot().streamKey
        XCTAssertEqual(stored, "fake-key-2", "we keep the key the platform issued last")
    }

    func testStoreFailureOnRotateKeepsTheOldKey() async throws {
        let registry = makeRegistry()
        let room = try await registry.create(request("self")).room
        let actor = try await registry.room(room.id)
        store.failWrites.withLock { $0 = true }
        await assertRoomError(.unavailable, containing: "disk full") { _ = try await actor.rotateKey() }
        try await actor.authorizePublish(key: room.streamKey)
    }

    func testCloseEndsTheRoomOnceAndRecordsHistory() async throws {
        let registry = makeRegistry()
        let room = try await registry.create(request("fake", requestId: "c1")).room
        let actor = try await registry.room(room.id)
        try await actor.setStatus(.live, reason: "media arriving")
        let closed = try await actor.close()
        XCTAssertEqual(closed.status, .ended)
        _ = try await actor.close()
        XCTAssertEqual(connector.closedRequests.withLock { $0 }, ["c1"])
        XCTAssertEqual(store.history.withLock { $0.map(\.1) }, [.live, .ended])
        await assertRoomError(.failedPrecondition, containing: "ended") { try await actor.authorizePublish(key: room.streamKey) }
        await assertRoomError(.failedPrecondition, containing: "ended") { _ = try await actor.rotateKey() }
    }

    func testUnknownRoomAndRevivalFromTheStore() async throws {
        let first = makeRegistry()
        let room = try await first.create(request("self")).room
        let second = makeRegistry()  // a restart: nothing in memory
        let revived = try await second.room(room.id).snapshot()
        XCTAssertEqual(revived, room)
        await assertRoomError(.notFound, containing: "no room") { _ = try await second.room("rm_missing") }
    }

    func testConstantTimeCompareAndRedaction() {
        XCTAssertTrue(StreamKey.equal("abc", "abc"))
        XCTAssertFalse(StreamKey.equal("abc", "abd"))
        XCTAssertFalse(StreamKey.equal("abc", "abcd"))
        XCTAssertFalse(StreamKey.equal("", "a"))
        XCTAssertFalse(StreamKey.equal("abc", "abc" + String(repeating: "\u{0}", count: 256)), "a length difference of 256 still differs")
        XCTAssertFalse(StreamKey.redacted("sk_secret").contains("secret"))
    }

    // MARK: helpers

    func assertRoomError(_ code: RoomError.Code, containing text: String, file: StaticString = #filePath, line: UInt = #line,
                         _ body: () async throws -> Any) async {
        do {
            _ = try await body()
            XCTFail("expected \(code)", file: file, line: line)
        } catch let error as RoomError {
            XCTAssertEqual(error.code, code, error.message, file: file, line: line)
            XCTAssertTrue(error.message.contains(text), error.message, file: file, line: line)
        } catch {
            XCTFail("unexpected \(error)", file: file, line: line)
        }
    }

    func waitUntil(_ condition: @escaping () -> Bool) async throws {
        for _ in 0..<200 where !condition() { try await Task.sleep(for: .milliseconds(10)) }
        XCTAssertTrue(condition())
    }
}
