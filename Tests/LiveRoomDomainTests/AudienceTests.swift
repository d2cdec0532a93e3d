import LiveRoomMessages
import Synchronization
import XCTest

@testable import LiveRoomDomain

final class AudienceTests: XCTestCase {
    let clock = AdjustableClock()
    let store = MemoryStore()

    private func report(_ seq: UInt64, room: String, comments: Int64 = 1, connector: String = "c1") -> AudienceReport {
        var r = AudienceReport()
        r.connectorId = connector
        r.sequence = seq
        r.roomId = room
        r.comments = comments
        return r
    }

    private func stored(_ r: AudienceReport, platform: String = "fake", at: Int64 = 60_000) -> StoredReport {
        StoredReport(platformId: platform, connectorId: r.connectorId, sequence: r.sequence, roomId: r.roomId, receivedAtMs: at, report: r)
    }

    private func makeRoom() async throws -> RoomActor {
        let registry = RoomRegistry(store: store, platforms: [], connectors: [:], builtin: BuiltinEndpoints(), clock: clock)
        let record = try await registry.create(RoomRegistryTests.request("self")).room
        return try await registry.room(record.id)
    }

    func testTotalsNeverTrapAndReportsThatWouldOverflowAreRefused() {
        var big = report(1, room: "rm")
        big.comments = .max
        XCTAssertEqual(AudienceLimits.problem(big), "comments is 9223372036854775807; one report may add at most 1000000000000")
        var huge = report(UInt64(Int64.max) + 1, room: "rm")
        XCTAssertNotNil(AudienceLimits.problem(huge))
        huge.sequence = UInt64(Int64.max)
        XCTAssertNil(AudienceLimits.problem(huge))
        var sale = report(1, room: "rm")
        sale.sales = Money()
        sale.sales!.minorUnits = .max
        sale.sales!.currency = "CNY"
        XCTAssertNotNil(AudienceLimits.problem(sale))
        var early = report(1, room: "rm")
        early.reportedAtMs = -1
        XCTAssertNotNil(AudienceLimits.problem(early))

        // Even reports that got past the edge (older data in the store) cannot make a total trap.
        var aggregate = AudienceAggregate()
        var max = report(1, room: "rm")
        (max.comments, max.likes, max.viewersOnline) = (.max, .max, .max)
        max.sales = sale.sales
        aggregate.add(stored(max))
        aggregate.add(stored(max, platform: "other"))
        max.sequence = 2
        aggregate.add(stored(max))
        XCTAssertEqual(aggregate.platforms["fake"]?.comments, .max)
        XCTAssertEqual(aggregate.platforms["fake"]?.sales?.minorUnits, .max)
        let all = aggregate.allPlatforms
        XCTAssertEqual(all.comments, .max)
        XCTAssertEqual(all.viewersOnline, .max)
        XCTAssertEqual(all.salesByCurrency.map(\.minorUnits), [.max])
    }

    func testSalesInTwoCurrenciesAreKeptApart() {
        var aggregate = AudienceAggregate()
        for (seq, amount, currency) in [(1, 10000, "CNY"), (2, 5, "USD"), (3, 1, "CNY")] as [(UInt64, Int64, String)] {
            var r = report(seq, room: "rm")
            r.sales = Money()
            r.sales!.minorUnits = amount
            r.sales!.currency = currency
            aggregate.add(stored(r))
        }
        let fake = aggregate.platforms["fake"]!
        XCTAssertNil(fake.sales, "no single total across currencies")
        XCTAssertEqual(fake.salesByCurrency.map { "\($0.minorUnits) \($0.currency)" }, ["10001 CNY", "5 USD"])
        XCTAssertEqual(aggregate.allPlatforms.salesByCurrency.count, 2)
        let minute = aggregate.minutes.values.first!
        XCTAssertEqual(minute.salesByCurrency.map(\.currency), ["CNY", "USD"])
    }

    /// A room's first stats load overlapping flushes of its reports: a flush stored before the
    /// read but applied after the load, and one stored during the load. Each counts once.
    func testAFirstLoadRacingFlushesCountsEveryReportExactlyOnce() async throws {
        let room = try await makeRoom()
        let before = [stored(report(1, room: room.id, comments: 10))]
        let beforeMark = try await store.insertReports(before)
        let during = [stored(report(2, room: room.id, comments: 100))]
        let store = self.store
        store.afterRead.withLock {
            $0 = {
                store.afterRead.withLock { $0 = nil }
                let mark = try! await store.insertReports(during)
                await room.applyAudience(during, mark: mark)
            }
        }
        let stats = try await room.audienceStats()
        // The earlier flush's apply arrives late, after the load read its report.
        await room.applyAudience(before, mark: beforeMark)
        let after = try await room.audienceStats()
        XCTAssertEqual(stats.platforms["fake"]?.comments, 110)
        XCTAssertEqual(after.platforms["fake"]?.comments, 110, "a report the load read is not added again")
        XCTAssertEqual(after.platforms["fake"]?.reports, 2)
    }

    func testConcurrentFirstLoadsReadTheStoreOnce() async throws {
        let room = try await makeRoom()
        _ = try await store.insertReports([stored(report(1, room: room.id))])
        let reads = Mutex(0)
        store.afterRead.withLock { $0 = { reads.withLock { $0 += 1 }; try? await Task.sleep(for: .milliseconds(20)) } }
        try await withThrowingTaskGroup(of: Int64?.self) { group in
            for _ in 0..<8 { group.addTask { try await room.audienceStats().platforms["fake"]?.comments } }
            for try await comments in group { XCTAssertEqual(comments, 1) }
        }
        XCTAssertEqual(reads.withLock { $0 }, 1)
    }

    /// A resend on another connection while the first copy is still being written is answered
    /// with the first copy's outcome, never "already counted" before that copy is durable.
    func testAResendOfAReportNotYetDurableGetsTheFirstCopysOutcome() async throws {
        let room = try await makeRoom()
        let ingestor = AudienceIngestor(store: store, clock: clock, maxBatch: 1_000)
        let acks = Mutex<[String: [AudienceAck]]>([:])
        func sink(_ name: String) -> AckSink { AckSink { a in acks.withLock { $0[name, default: []] += a } } }
        store.failWrites.withLock { $0 = true }
        await ingestor.submit(platformId: "fake", [(report(1, room: room.id), room)], sink: sink("A"))
        await ingestor.submit(platformId: "fake", [(report(1, room: room.id), room)], sink: sink("B"))
        XCTAssertNil(acks.withLock { $0["B"] }, "B waits for A's copy")
        await ingestor.flush()
        try await waitUntil { acks.withLock { $0["A"]?.count == 1 && $0["B"]?.count == 1 } }
        XCTAssertEqual(acks.withLock { $0["A"]!.map(\.code) }, [14])
        XCTAssertEqual(acks.withLock { $0["B"]!.map(\.code) }, [14], "not stored: B must resend, not believe it counted")

        store.failWrites.withLock { $0 = false }
        await ingestor.submit(platformId: "fake", [(report(1, room: room.id), room)], sink: sink("C"))
        await ingestor.submit(platformId: "fake", [(report(1, room: room.id), room)], sink: sink("D"))
        await ingestor.flush()
        try await waitUntil { acks.withLock { $0["C"]?.count == 1 && $0["D"]?.count == 1 } }
        XCTAssertEqual(acks.withLock { $0["C"]!.map(\.duplicate) }, [false])
        XCTAssertEqual(acks.withLock { $0["D"]!.map(\.duplicate) }, [true])
        XCTAssertEqual(acks.withLock { $0["D"]!.map(\.code) }, [0])
        await ingestor.submit(platformId: "fake", [(report(2, room: room.id), room)], sink: sink("E"))
        await ingestor.flush()
        // One huge jump would make every later ordinary sequence "too old": it is refused.
        await ingestor.submit(platformId: "fake", [(report(5_000_000, room: room.id), room)], sink: sink("F"))
        await ingestor.submit(platformId: "fake", [(report(3, room: room.id), room)], sink: sink("G"))
        await ingestor.flush()
        try await waitUntil { acks.withLock { $0["F"]?.count == 1 && $0["G"]?.count == 1 } }
        XCTAssertEqual(acks.withLock { $0["F"]!.map(\.code) }, [3])
        XCTAssertEqual(acks.withLock { $0["G"]!.map(\.code) }, [0])
        let comments = try await room.audienceStats().platforms["fake"]?.comments
        XCTAssertEqual(comments, 3, "sequences 1, 2 and 3, once each")
    }

    private func waitUntil(_ condition: @escaping () -> Bool) async throws {
        for _ in 0..<500 where !condition() { try await Task.sleep(for: .milliseconds(10)) }
        XCTAssertTrue(condition())
    }
}
