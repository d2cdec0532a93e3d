import Foundation
import GRDB
import LiveRoomDomain
import LiveRoomMessages
import XCTest

@testable import LiveRoomStore

final class SQLiteStoreTests: XCTestCase {
    var dir: String!

    override func setUp() {
        dir = NSTemporaryDirectory() + "store-\(UUID().uuidString.prefix(8))"
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: dir)
    }

    func room(_ id: String, at: Int64, platform: String = "self", status: RoomStatus = .notStarted, kind: RoomKind = .live) -> RoomRecord {
        RoomRecord(id: id, requestId: "req-\(id)", title: "Title \(id)", kind: kind, platformId: platform, playMode: .embedded,
                   ownerId: "u1", pushServer: "rtmp://x/live", streamKey: "sk_secret_\(id)_0123456789", keyExpiresAtMs: at + 1000,
                   playURL: "liveroom://x/\(id)", platformRoomId: platform == "self" ? "" : "p-\(id)", status: status,
                   createdAtMs: at, updatedAtMs: at)
    }

    func testRoundTripAcrossReopen() async throws {
        let a = room("rm_a", at: 100)
        do {
            let store = try SQLiteStore(directory: dir)
            try await store.insert(a)
        }
        let reopened = try SQLiteStore(directory: dir)
        let loaded = try await reopened.load(id: "rm_a")
        XCTAssertEqual(loaded, a)
        let byRequest = try await reopened.find(requestId: "req-rm_a")
        XCTAssertEqual(byRequest, a)
        let missing = try await reopened.load(id: "nope")
        XCTAssertNil(missing)
    }

    func testRoomFoundByItsCurrentKeyOnlyAndOldRowsBackfilled() async throws {
        let a = room("rm_a", at: 100)
        do {
            let store = try SQLiteStore(directory: dir)
            try await store.insert(a)
            try await store.insert(room("rm_b", at: 200))
            var rotated = a
            rotated.streamKey = "sk_new_key_of_a_0123456789"
            try await store.update(rotated, previous: a, reason: "key rotated")
            let byNew = try await store.roomId(forStreamKey: "sk_new_key_of_a_0123456789")
            XCTAssertEqual(byNew, "rm_a")
            let byOld = try await store.roomId(forStreamKey: a.streamKey)
            XCTAssertNil(byOld, "a rotated key finds nothing")
            let byB = try await store.roomId(forStreamKey: "sk_secret_rm_b_0123456789")
            XCTAssertEqual(byB, "rm_b")
            // As a database from before the digest column: digests missing.
            try await store.pool.write { try $0.execute(sql: "UPDATE stream_keys SET key_digest = NULL") }
            let gone = try await store.roomId(forStreamKey: "sk_secret_rm_b_0123456789")
            XCTAssertNil(gone)
        }
        let reopened = try SQLiteStore(directory: dir)
        let backfilled = try await reopened.roomId(forStreamKey: "sk_secret_rm_b_0123456789")
        XCTAssertEqual(backfilled, "rm_b", "opening the store fills in digests of older rows")
        let digests = try await reopened.pool.read { try Int.fetchOne($0, sql: "SELECT count(*) FROM stream_keys WHERE key_digest IS NULL AND revoked_at_ms IS NULL") }
        XCTAssertEqual(digests, 0)
    }

    func testAudienceReportsRoundTripInBatchesAndOldRowsStillCount() async throws {
        let store = try SQLiteStore(directory: dir)
        try await store.insert(room("rm_a", at: 1))
        func stored(_ seq: UInt64, connector: String = "c1", at: Int64 = 60_000) -> StoredReport {
            var r = AudienceReport()
            r.connectorId = connector
            r.roomId = "rm_a"
            r.comments = Int64(seq)
            return StoredReport(platformId: "douyin", connectorId: connector, sequence: seq, roomId: "rm_a", receivedAtMs: at, report: r)
        }
        // Two connectors and two arrival times in one flush: three groups, every report kept.
        let batch = (1...5).map { stored($0) } + (1...3).map { stored($0, connector: "c2") } + [stored(6, at: 120_000)]
        let mark = try await store.insertReports(batch)
        let rows = try await store.pool.read { try Int.fetchOne($0, sql: "SELECT count(*) FROM audience_batches") }
        XCTAssertEqual(rows, 3, "one row per group, not per report")
        XCTAssertEqual(mark, 3, "the commit mark is the transaction's last row")
        // A row written by an earlier version, one report per row.
        var old = AudienceReport()
        old.comments = 100
        let oldBlob = Data(try old.serializedBytes())
        try await store.pool.write { db in
            try db.execute(sql: "INSERT INTO audience_reports VALUES ('douyin', 'c0', 9, 'rm_a', 1000, ?)", arguments: [oldBlob])
        }
        let read = try await SQLiteStore(directory: dir).loadReports(roomId: "rm_a")
        XCTAssertEqual(read.mark, 3)
        let loaded = read.reports
        XCTAssertEqual(loaded.count, 10)
        XCTAssertEqual(loaded.map(\.report.comments).reduce(0, +), 15 + 6 + 6 + 100)
        XCTAssertEqual(Set(loaded.filter { $0.connectorId == "c1" }.map(\.sequence)), [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(loaded.first?.connectorId, "c0", "oldest arrival first")
        let c1 = try await store.sequences(platformId: "douyin", connectorId: "c1", from: 3)
        XCTAssertEqual(c1.seen, [3, 4, 5, 6])
        XCTAssertEqual(c1.highest, 6)
        let c0 = try await store.sequences(platformId: "douyin", connectorId: "c0", from: 0)
        XCTAssertEqual(c0.seen, [9])
        XCTAssertEqual(c0.highest, 9)
    }

    func testReportsOfRoomsInterleavedMakeOneRowPerRoomAndMarksGrow() async throws {
        let store = try SQLiteStore(directory: dir)
        try await store.insert(room("rm_a", at: 1))
        try await store.insert(room("rm_b", at: 2))
        let batch = (1...10).map { seq -> StoredReport in
            var r = AudienceReport()
            r.roomId = seq % 2 == 0 ? "rm_a" : "rm_b"
            r.likes = 1
            return StoredReport(platformId: "douyin", connectorId: "c1", sequence: UInt64(seq), roomId: r.roomId, receivedAtMs: 5, report: r)
        }
        let first = try await store.insertReports(batch)
        let rows = try await store.pool.read { try Int.fetchOne($0, sql: "SELECT count(*) FROM audience_batches") }
        XCTAssertEqual(rows, 2, "alternating rooms still make one row per room")
        let second = try await store.insertReports([batch[0]].map { var r = $0; r.sequence = 11; return r })
        XCTAssertGreaterThan(second, first)
        let a = try await store.loadReports(roomId: "rm_a")
        XCTAssertEqual(a.reports.map(\.sequence).sorted(), [2, 4, 6, 8, 10])
        XCTAssertEqual(a.mark, second)
    }

    func testARoomIdReservedForARequestIdIsTheSameOnEveryAttempt() async throws {
        let id1 = try await SQLiteStore(directory: dir).reserveRoomId(requestId: "req-1", candidate: "rm_first")
        // As after kill -9 and a restart: a new store, a new candidate, the old answer.
        let id2 = try await SQLiteStore(directory: dir).reserveRoomId(requestId: "req-1", candidate: "rm_second")
        let other = try await SQLiteStore(directory: dir).reserveRoomId(requestId: "req-2", candidate: "rm_third")
        XCTAssertEqual(id1, "rm_first")
        XCTAssertEqual(id2, "rm_first")
        XCTAssertEqual(other, "rm_third")
    }

    func testKeysAreEncryptedAtRestAndMasterKeyIsPrivate() async throws {
        let store = try SQLiteStore(directory: dir)
        try await store.insert(room("rm_k", at: 1))
        _ = try await store.load(id: "rm_k")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("liveroom.sqlite") }
        for f in files {
            let bytes = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + f))
            XCTAssertNil(bytes.range(of: Data("sk_secret_rm_k".utf8)), "\(f) holds the key in clear")
        }
        let mode = try FileManager.default.attributesOfItem(atPath: dir + "/master.key")[.posixPermissions] as? NSNumber
        XCTAssertEqual(mode?.intValue, 0o600)
    }

    func testRotationRevokesTheOldKeyAndStatusHistoryIsKept() async throws {
        let store = try SQLiteStore(directory: dir)
        let a = room("rm_r", at: 10)
        try await store.insert(a)
        var b = a
        b.streamKey = "sk_new_key_abcdefghijklmnop"
        b.keyExpiresAtMs = 5000
        b.status = .live
        b.updatedAtMs = 20
        try await store.update(b, previous: a, reason: "media arriving")
        let loaded = try await store.load(id: "rm_r")
        XCTAssertEqual(loaded, b)
        let keys = try await store.pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM stream_keys WHERE room_id = 'rm_r'") }
        XCTAssertEqual(keys, 2)
        let history = try await store.statusHistory(roomId: "rm_r")
        XCTAssertEqual(history.map(\.status), [.notStarted, .live])
        XCTAssertEqual(history.map(\.reason), ["created", "media arriving"])
    }

    func testListingFiltersAndPages() async throws {
        let store = try SQLiteStore(directory: dir)
        for i in 0..<7 {
            try await store.insert(room("rm_\(i)", at: Int64(i / 2), platform: i % 2 == 0 ? "self" : "douyin",
                                        status: i == 3 ? .live : .notStarted, kind: i == 5 ? .meeting : .live))
        }
        var seen: [String] = []
        var query = RoomQuery(limit: 3)
        while true {
            let page = try await store.list(query)
            seen += page.map(\.id)
            guard page.count == 3, let last = page.last else { break }
            query.after = (last.createdAtMs, last.id)
        }
        XCTAssertEqual(seen, ["rm_6", "rm_5", "rm_4", "rm_3", "rm_2", "rm_1", "rm_0"], "newest first, ties by id, no gaps or repeats")
        let douyin = try await store.list(RoomQuery(platformId: "douyin", limit: 10))
        XCTAssertEqual(douyin.map(\.id), ["rm_5", "rm_3", "rm_1"])
        let live = try await store.list(RoomQuery(status: .live, limit: 10))
        XCTAssertEqual(live.map(\.id), ["rm_3"])
        let meetings = try await store.list(RoomQuery(kind: .meeting, limit: 10))
        XCTAssertEqual(meetings.map(\.id), ["rm_5"])
    }

    func testFullDiskIsUnavailableAndReadsGoOn() async throws {
        var options = SQLiteStore.Options()
        options.maxPageCount = 40
        let store = try SQLiteStore(directory: dir, options: options)
        var failure: RoomError?
        var stored: [String] = []
        for i in 0..<2000 {
            var r = room("rm_full_\(i)", at: Int64(i))
            r.title = String(repeating: "x", count: 150)
            do {
                try await store.insert(r)
                stored.append(r.id)
            } catch let e as RoomError {
                failure = e
                break
            }
        }
        let error = try XCTUnwrap(failure, "the capped database should fill up")
        XCTAssertEqual(error.code, .unavailable)
        XCTAssertTrue(error.message.contains("full"), error.message)
        let first = try await store.load(id: stored[0])
        XCTAssertNotNil(first, "reads still work")
        let all = try await store.list(RoomQuery(limit: 5000))
        XCTAssertEqual(all.count, stored.count, "nothing acknowledged was lost")

        XCTAssertFalse(store.isWritable, "a full store says so")
        let probe = await store.probeWritable()
        XCTAssertFalse(probe, "and a probe cannot write either")
        // Space comes back (here: the cap is raised); the next probe notices.
        try await store.pool.writeWithoutTransaction { try $0.execute(sql: "PRAGMA max_page_count = 100000") }
        let recovered = await store.probeWritable()
        XCTAssertTrue(recovered)
        XCTAssertTrue(store.isWritable)
    }
}
