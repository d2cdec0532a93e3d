import Foundation
import LiveRoomMessages
import LiveRoomRPC
import LiveRoomTesting
import NIOCore
import XCTest

/// Connectors reporting their platform's audience to a real daemon.
final class AudienceTests: XCTestCase {
    var dir: URL!
    var config: URL!

    override func setUp() {
        dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("aud-\(UUID().uuidString.prefix(8))")
        config = dir.appendingPathComponent("d.conf")
    }

    func start(settings: String = "") async throws -> (DaemonProcess, [PlatformSimProcess]) {
        let sims = [try await PlatformSimProcess(name: "douyin", directory: dir), try await PlatformSimProcess(name: "kuaishou", directory: dir)]
        try (settings + sims.map { $0.configSection() }.joined()).write(to: config, atomically: true, encoding: .utf8)
        return (try await DaemonProcess(arguments: ["--config", config.path], directory: dir), sims)
    }

    func connector(_ d: DaemonProcess, _ sim: PlatformSimProcess?) async throws -> RPCClient {
        var c = ClientConfiguration()
        if let sim { c.defaultMetadata.add("authorization", "Bearer \(sim.token)") }
        return try await RPCClient.connect(to: d.unixEndpoint, configuration: c)
    }

    func report(_ room: String, _ seq: UInt64, connector: String = "c1", online: Int64 = 10, comments: Int64 = 1, sales: Int64 = 100) -> AudienceReport {
        var r = AudienceReport()
        r.connectorId = connector
        r.sequence = seq
        r.roomId = room
        r.viewersOnline = online
        r.newViewers = 2
        r.comments = comments
        r.likes = 3
        r.interactions = 4
        r.gifts = 1
        r.itemsSold = 1
        var m = Money()
        m.minorUnits = sales
        m.currency = "CNY"
        r.sales = m
        return r
    }

    /// Sends reports on one stream; returns the acks by sequence.
    func send(_ client: RPCClient, _ reports: [AudienceReport]) async throws -> [UInt64: AudienceAck] {
        let call = try await client.streaming(AudienceService.reportAudience)
        for r in reports { try await call.send(r) }
        call.halfClose()
        var acks: [UInt64: AudienceAck] = [:]
        var count = 0
        for try await a in call.responses {
            acks[a.sequence] = a
            count += 1
        }
        XCTAssertEqual(count, reports.count, "one ack per report")
        return acks
    }

    func stats(_ client: RPCClient, _ room: String) async throws -> GetRoomStatsResponse {
        var r = GetRoomStatsRequest()
        r.roomId = room
        return try await client.unary(AudienceService.getRoomStats, r)
    }

    func makeRoom(_ client: RPCClient, _ platform: String) async throws -> String {
        var r = CreateRoomRequest()
        r.kind = .live
        r.platformId = platform
        r.title = "Audience"
        return try await client.unary(RoomService.createRoom, r).room!.roomId
    }

    func testExactCountsUnderResendsDuplicatesAndKill9() async throws {
        let (d, sims) = try await start()
        let admin = try await d.connect(.unix)
        let room = try await makeRoom(admin, "douyin")
        let douyin = try await connector(d, sims[0])
        let first = try await send(douyin, (1...60).map { report(room, $0, online: Int64($0)) })
        XCTAssertTrue(first.values.allSatisfy { $0.code == 0 && !$0.duplicate })
        // A reconnecting connector resends 41...60 and continues to 100.
        let second = try await send(douyin, (41...100).map { report(room, $0, online: Int64($0)) })
        XCTAssertEqual(second.values.filter(\.duplicate).count, 20)
        XCTAssertTrue(second.values.allSatisfy { $0.code == 0 })
        // The same sequence twice in one stream counts once.
        let again = try await send(douyin, [report(room, 101), report(room, 101)])
        XCTAssertEqual(again[101]?.code, 0)

        var s = try await stats(admin, room)
        let p = try XCTUnwrap(s.platforms.first)
        XCTAssertEqual(p.platformId, "douyin")
        XCTAssertEqual(p.reports, 101)
        XCTAssertEqual(p.comments, 101)
        XCTAssertEqual(p.newViewers, 202)
        XCTAssertEqual(p.likes, 303)
        XCTAssertEqual(p.interactions, 404)
        XCTAssertEqual(p.gifts, 101)
        XCTAssertEqual(p.itemsSold, 101)
        XCTAssertEqual(p.sales?.minorUnits, 10_100)
        XCTAssertEqual(p.sales?.currency, "CNY")
        XCTAssertEqual(p.peakViewersOnline, 100)
        XCTAssertEqual(s.allPlatforms?.comments, 101)
        XCTAssertEqual(s.combinedReach, 202, "platform new viewers plus our distinct viewers (none)")

        // kill -9 after the acks: nothing acknowledged is lost.
        d.signal(SIGKILL)
        try await d.waitForExit()
        await admin.close()
        await douyin.close()
        let restarted = try await DaemonProcess(arguments: ["--config", config.path], directory: dir)
        let admin2 = try await restarted.connect(.unix)
        s = try await stats(admin2, room)
        XCTAssertEqual(s.platforms.first?.reports, 101)
        XCTAssertEqual(s.platforms.first?.comments, 101)
        XCTAssertEqual(s.platforms.first?.sales?.minorUnits, 10_100)
        // And duplicates are still recognised after the restart.
        let douyin2 = try await connector(restarted, sims[0])
        let late = try await send(douyin2, [report(room, 100), report(room, 102)])
        XCTAssertEqual(late[100]?.duplicate, true)
        XCTAssertEqual(late[102]?.duplicate, false)
        await douyin2.close()
        await admin2.close()
        try await restarted.stop()
        sims.forEach { $0.stop() }
    }

    /// Sends batches on one ReportAudienceBatch stream; returns the acks by sequence.
    func sendBatches(_ client: RPCClient, _ batches: [[AudienceReport]]) async throws -> [UInt64: AudienceAck] {
        let call = try await client.streaming(AudienceService.reportAudienceBatch)
        for reports in batches {
            var b = AudienceReportBatch()
            b.reports = reports
            try await call.send(b)
        }
        call.halfClose()
        var acks: [UInt64: AudienceAck] = [:]
        var count = 0
        for try await batch in call.responses {
            for a in batch.acks { acks[a.sequence] = a }
            count += batch.acks.count
        }
        XCTAssertEqual(count, batches.map(\.count).reduce(0, +), "one ack per report")
        return acks
    }

    func testBatchesFollowTheSameRulesAsSingleReports() async throws {
        let (d, sims) = try await start()
        let admin = try await d.connect(.unix)
        let room = try await makeRoom(admin, "douyin")
        let other = try await makeRoom(admin, "kuaishou")
        let douyin = try await connector(d, sims[0])
        var negative = report(room, 7)
        negative.likes = -1
        // 1...50 with a duplicate inside a batch, a bad report, a foreign room and an unknown one.
        let first = try await sendBatches(douyin, [
            (1...6).map { report(room, $0) } + [report(room, 6), negative],
            (8...50).map { report(room, $0) } + [report(other, 51), report("rm_missing", 52)],
        ])
        XCTAssertEqual(first[7]?.code, RPCStatus.Code.invalidArgument.rawValue)
        XCTAssertEqual(first[51]?.code, RPCStatus.Code.permissionDenied.rawValue)
        XCTAssertEqual(first[52]?.code, RPCStatus.Code.notFound.rawValue)
        XCTAssertEqual((1...50).filter { $0 != 7 && first[UInt64($0)]?.code == 0 }.count, 49)
        // A reconnect resends 40...50 in one batch with 53...60: eleven duplicates.
        let second = try await sendBatches(douyin, [(40...50).map { report(room, $0) } + (53...60).map { report(room, $0) }])
        XCTAssertEqual(second.values.filter(\.duplicate).count, 11)
        // Single reports and batches share the duplicate memory.
        let single = try await send(douyin, [report(room, 60), report(room, 61)])
        XCTAssertEqual(single[60]?.duplicate, true)
        XCTAssertEqual(single[61]?.duplicate, false)

        let s = try await stats(admin, room)
        let expected = 49 + 8 + 1  // 1...50 without 7, 53...60, 61
        XCTAssertEqual(s.platforms.first?.reports, Int64(expected))
        XCTAssertEqual(s.platforms.first?.comments, Int64(expected))
        XCTAssertEqual(s.platforms.first?.sales?.minorUnits, Int64(expected * 100))
        for c in [admin, douyin] { await c.close() }
        try await d.stop()
        sims.forEach { $0.stop() }
    }

    func testIdentityUnknownRoomsAndBadReports() async throws {
        let (d, sims) = try await start()
        let admin = try await d.connect(.unix)
        let room = try await makeRoom(admin, "douyin")
        let own = try await makeRoom(admin, "self")
        let kuaishou = try await connector(d, sims[1])
        let acks = try await send(kuaishou, [report(room, 1), report("rm_missing", 2), report(own, 3)])
        XCTAssertEqual(acks[1]?.code, RPCStatus.Code.permissionDenied.rawValue)
        XCTAssertEqual(acks[2]?.code, RPCStatus.Code.notFound.rawValue)
        XCTAssertEqual(acks[3]?.code, RPCStatus.Code.permissionDenied.rawValue)

        let douyin = try await connector(d, sims[0])
        var negative = report(room, 1)
        negative.comments = -5
        var badCurrency = report(room, 2)
        badCurrency.sales?.currency = "yuan"
        let mixed = try await send(douyin, [negative, badCurrency, report(room, 3), report(room, 0)])
        XCTAssertEqual(mixed[1]?.code, RPCStatus.Code.invalidArgument.rawValue)
        XCTAssertTrue(mixed[1]?.message.contains("comments must not be negative") ?? false)
        XCTAssertEqual(mixed[2]?.code, RPCStatus.Code.invalidArgument.rawValue)
        XCTAssertEqual(mixed[3]?.code, 0, "the stream goes on after refused reports")
        XCTAssertEqual(mixed[0]?.code, RPCStatus.Code.invalidArgument.rawValue)
        let s = try await stats(admin, room)
        XCTAssertEqual(s.platforms.first?.reports, 1, "refused reports change nothing")
        XCTAssertEqual(s.platforms.first?.comments, 1)

        var wrongToken = ClientConfiguration()
        wrongToken.defaultMetadata.add("authorization", "Bearer not-the-token")
        let impostor = try await RPCClient.connect(to: d.unixEndpoint, configuration: wrongToken)
        let refused = try await impostor.streaming(AudienceService.reportAudience)
        refused.halfClose()
        let refusal = try await refused.outcome.status
        XCTAssertEqual(refusal.code, .unauthenticated)
        XCTAssertTrue(refusal.message.contains("not any platform's connector token"), "a wrong token is not called missing: \(refusal.message)")
        await impostor.close()

        let anonymous = try await connector(d, nil)
        let call = try await anonymous.streaming(AudienceService.reportAudience)
        try? await call.send(report(room, 9))
        call.halfClose()
        let outcome = try await call.outcome
        XCTAssertEqual(outcome.status.code, .unauthenticated)
        for c in [admin, kuaishou, douyin, anonymous] { await c.close() }
        try await d.stop()
        sims.forEach { $0.stop() }
    }

    /// Values at the edges of their types: refused or kept apart, never a crash, and the room's
    /// stats answer after a restart as before it.
    func testExtremeValuesAreRefusedAndStatsSurviveARestart() async throws {
        let (d, sims) = try await start()
        let admin = try await d.connect(.unix)
        let room = try await makeRoom(admin, "douyin")
        let douyin = try await connector(d, sims[0])
        var huge = report(room, 1)
        huge.comments = .max
        var biggest = report(room, 2)
        (biggest.comments, biggest.likes) = (1_000_000_000_000, 1_000_000_000_000)
        let hugeSequence = report(room, UInt64(Int64.max) + 1)
        var dollars = report(room, 3)
        dollars.sales?.currency = "USD"
        dollars.sales?.minorUnits = 5
        let acks = try await send(douyin, [huge, biggest, biggest, hugeSequence, dollars, report(room, 4)])
        XCTAssertEqual(acks[1]?.code, RPCStatus.Code.invalidArgument.rawValue)
        XCTAssertTrue(acks[1]?.message.contains("at most 1000000000000") ?? false, acks[1]?.message ?? "")
        XCTAssertEqual(acks[2]?.code, 0)
        XCTAssertEqual(acks[UInt64(Int64.max) + 1]?.code, RPCStatus.Code.invalidArgument.rawValue)
        XCTAssertEqual(acks[3]?.code, 0)
        XCTAssertEqual(acks[4]?.code, 0)
        // The refused huge sequence did not poison the connector: ordinary ones go on.
        let next = try await send(douyin, [report(room, 5)])
        XCTAssertEqual(next[5]?.code, 0)

        func check(_ s: GetRoomStatsResponse) {
            let p = s.platforms.first
            XCTAssertEqual(p?.comments, 1_000_000_000_000 + 3)
            XCTAssertNil(p?.sales, "two currencies have no single total")
            XCTAssertEqual(p?.salesByCurrency.map { "\($0.minorUnits) \($0.currency)" }, ["300 CNY", "5 USD"])
            XCTAssertEqual(s.allPlatforms?.salesByCurrency.count, 2)
        }
        check(try await stats(admin, room))
        d.signal(SIGKILL)
        _ = try await d.waitForExit()
        await admin.close()
        await douyin.close()
        let restarted = try await DaemonProcess(arguments: ["--config", config.path], directory: dir)
        let admin2 = try await restarted.connect(.unix)
        check(try await stats(admin2, room))
        await admin2.close()
        try await restarted.stop()
        sims.forEach { $0.stop() }
    }

    /// Acks that together exceed the frame size go out in several answers, never one that
    /// cannot be sent (the stream would go silent).
    func testAcksThatDoNotFitOneFrameAreSplit() async throws {
        let (d, sims) = try await start(settings: "max_frame_size = 1024\n")
        let admin = try await d.connect(.unix)
        let room = try await makeRoom(admin, "douyin")
        let douyin = try await connector(d, sims[0])
        // Refused reports carry long messages: 20 of them are far more than 1 KiB of acks.
        let bad = (1...20).map { seq -> AudienceReport in
            var r = report(room, UInt64(seq))
            r.sales?.currency = "not-a-currency"
            return r
        }
        // Batches small enough for the 1 KiB frames the daemon takes.
        let acks = try await sendBatches(douyin, [Array(bad[0..<10]), Array(bad[10..<20])] + stride(from: 21, to: 41, by: 5).map { first in
            (first..<first + 5).map { report(room, UInt64($0)) }
        })
        XCTAssertEqual(acks.count, 40)
        XCTAssertEqual(acks.values.filter { $0.code == 0 }.count, 20)
        for c in [admin, douyin] { await c.close() }
        try await d.stop()
        sims.forEach { $0.stop() }
    }

    /// Over TCP, audience reports (single or batched) take the platform's connector token, and
    /// only that: the admin token is told so.
    func testConnectorsReportOverTCPWithTheirToken() async throws {
        let (d, sims) = try await start()
        let admin = try await d.connect(.unix)
        let room = try await makeRoom(admin, "douyin")
        var c = ClientConfiguration()
        c.defaultMetadata.add("authorization", "Bearer \(sims[0].token)")
        let overTCP = try await RPCClient.connect(to: d.tcpEndpoint, configuration: c)
        let batch = try await sendBatches(overTCP, [[report(room, 1), report(room, 2)]])
        XCTAssertEqual(batch.values.map(\.code), [0, 0])
        let single = try await send(overTCP, [report(room, 3)])
        XCTAssertEqual(single[3]?.code, 0)

        let withAdminToken = try await d.connect(.tcp)
        let call = try await withAdminToken.streaming(AudienceService.reportAudienceBatch)
        call.halfClose()
        let refused = try await call.outcome.status
        XCTAssertEqual(refused.code, .permissionDenied)
        XCTAssertTrue(refused.message.contains("connector token"), refused.message)
        for client in [admin, overTCP, withAdminToken] { await client.close() }
        try await d.stop()
        sims.forEach { $0.stop() }
    }

    func testPerMinuteBucketsAcrossAMinuteBoundary() async throws {
        let (d, sims) = try await start()
        let admin = try await d.connect(.unix)
        let room = try await makeRoom(admin, "douyin")
        let douyin = try await connector(d, sims[0])
        var advance = AdvanceClockRequest()
        advance.byMs = 0
        let now = try await admin.unary(TestControl.advanceClock, advance).nowMs
        // Move to 1 s before a minute boundary.
        advance.byMs = (60_000 - now % 60_000) - 1000
        _ = try await admin.unary(TestControl.advanceClock, advance)
        _ = try await send(douyin, [report(room, 1, online: 5, comments: 2), report(room, 2, online: 7, comments: 3)])
        advance.byMs = 2000
        _ = try await admin.unary(TestControl.advanceClock, advance)
        _ = try await send(douyin, [report(room, 3, online: 9, comments: 10)])
        let minutes = try await stats(admin, room).minutes
        XCTAssertEqual(minutes.count, 2)
        XCTAssertEqual(minutes.map(\.comments), [5, 10])
        XCTAssertEqual(minutes.map(\.viewersOnline), [7, 9])
        XCTAssertEqual(minutes[1].minuteStartMs - minutes[0].minuteStartMs, 60_000)
        await douyin.close()
        await admin.close()
        try await d.stop()
        sims.forEach { $0.stop() }
    }

    func testSimulatorStreamsReportsThroughReconnects() async throws {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let daemonSocket = dir.appendingPathComponent("d.sock").path
        let sim = try await PlatformSimProcess(name: "huya", directory: dir, extra: [
            "--report-to", "unix:\(daemonSocket)", "--report-interval-ms", "50", "--reconnect-every", "7",
        ])
        defer { sim.stop() }
        try sim.configSection().write(to: config, atomically: true, encoding: .utf8)
        let d = try await DaemonProcess(arguments: ["--config", config.path], directory: dir)
        let admin = try await d.connect(.unix)
        let room = try await makeRoom(admin, "huya")
        var reports: Int64 = 0
        for _ in 0..<100 where reports < 20 {
            try await Task.sleep(for: .milliseconds(100))
            reports = try await stats(admin, room).platforms.first(where: { $0.platformId == "huya" })?.reports ?? 0
        }
        XCTAssertGreaterThanOrEqual(reports, 20, "live numbers arrive from the simulated platform, across reconnects")
        let s = try await stats(admin, room)
        XCTAssertEqual(s.platforms.first?.sales?.currency, "CNY")
        XCTAssertFalse(s.minutes.isEmpty)
        await admin.close()
        try await d.stop()
    }
}
