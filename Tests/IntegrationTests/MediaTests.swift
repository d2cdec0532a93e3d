import Foundation
import LiveRoomClient
import LiveRoomMessages
import LiveRoomRPC
import LiveRoomTesting
import NIOConcurrencyHelpers
import NIOCore
import XCTest

/// Publishing and watching through a real daemon.
final class MediaTests: XCTestCase {
    func daemon(_ config: String = "") async throws -> DaemonProcess {
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("media-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let file = dir.appendingPathComponent("d.conf")
        try config.write(to: file, atomically: true, encoding: .utf8)
        return try await DaemonProcess(arguments: ["--config", file.path], directory: dir)
    }

    func room(_ client: RPCClient) async throws -> Room {
        var r = CreateRoomRequest()
        r.kind = .live
        r.platformId = "self"
        r.title = "Media test"
        return try await client.unary(RoomService.createRoom, r).room!
    }

    func chunk(_ i: Int, size: Int = 4096, keyframe: Bool = false, header: Bool = false) -> MediaChunk {
        var c = MediaChunk()
        c.sequence = UInt64(i)
        c.keyframe = keyframe
        c.header = header
        c.payload = ByteBuffer(bytes: (0..<size).map { UInt8(truncatingIfNeeded: i &* 31 &+ $0) })
        return c
    }

    func startPublishing(_ client: RPCClient, _ room: Room, key: String? = nil) async throws -> StreamingCall<StreamDataRequest, StreamDataResponse> {
        try await client.startPublishing(roomId: room.roomId, streamKey: key ?? room.streamKey)
    }

    func send(_ call: StreamingCall<StreamDataRequest, StreamDataResponse>, _ c: MediaChunk) async throws {
        try await call.send(chunk: c)
    }

    func watch(_ client: RPCClient, _ room: Room, viewer: String, name: String = "Ann", phone: String = "13800000000") async throws
        -> StreamingCall<WatchRequest, WatchResponse>
    {
        var w = WatchRequest()
        w.roomId = room.roomId
        w.viewerId = viewer
        w.name = name
        w.phone = phone
        return try await client.serverStreaming(MediaService.watch, w)
    }

    func stats(_ client: RPCClient, _ room: Room) async throws -> ViewerStats {
        var r = GetRoomStatsRequest()
        r.roomId = room.roomId
        return try await client.unary(AudienceService.getRoomStats, r).viewers ?? ViewerStats()
    }

    func viewers(_ client: RPCClient, _ room: Room) async throws -> [Viewer] {
        var r = ListViewersRequest()
        r.roomId = room.roomId
        return try await client.unary(AudienceService.listViewers, r).viewers
    }

    func waitFor(_ what: String, _ condition: () async throws -> Bool) async throws {
        for _ in 0..<300 {
            if try await condition() { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        XCTFail("timed out waiting for \(what)")
    }

    func testPublishAndWatchByteIdenticalOverUnixAndTCP() async throws {
        let d = try await daemon()
        for transport in [Transport.unix, .tcp] {
            let client = try await d.connect(transport)
            let room = try await room(client)
            let viewer = try await watch(client, room, viewer: "v-\(transport)")
            try await waitFor("the viewer to join") { try await self.stats(client, room).onlineNow == 1 }
            let publisher = try await startPublishing(client, room)
            let sent = (0..<50).map { chunk($0, size: 1000 + $0 * 997, keyframe: $0 % 10 == 0, header: $0 == 0) }
            for c in sent { try await send(publisher, c) }
            let summary = try await publisher.finish()
            XCTAssertEqual(summary.chunksReceived, 50)
            var got: [MediaChunk] = []
            var events: [StreamEventKind] = []
            for try await m in viewer.responses {
                switch m.message {
                case .chunk(let c)?: got.append(c)
                case .event(let e)?: events.append(e.kind)
                case nil: break
                }
                if events.last == .ended { break }
            }
            viewer.cancel()
            XCTAssertEqual(got.map(\.sequence), sent.map(\.sequence), "\(transport): every chunk, in order")
            XCTAssertEqual(got.map(\.payload), sent.map(\.payload), "\(transport): byte-identical")
            XCTAssertEqual(got.map(\.keyframe), sent.map(\.keyframe))
            XCTAssertEqual(events, [.started, .ended], "the viewer is told when the stream starts and ends")
            let status = try await client.unary(RoomService.getRoom, { var r = GetRoomRequest(); r.roomId = room.roomId; return r }()).room!.status
            XCTAssertEqual(status, .notStarted, "back to not started when the publisher ends")
            await client.close()
        }
        try await d.stop()
    }

    func testMergedWritesStillDeliverEveryChunkInOrderWhileThePublisherIsOn() async throws {
        // Live-room viewers' writes wait up to viewer_merge_ms to go out together. The first
        // chunk must still arrive while the publisher is connected (the merge timer flushes it,
        // not the end of the stream), and every chunk in order.
        let d = try await daemon("viewer_merge_ms = 300\n")
        let client = try await d.connect(.unix)
        let room = try await room(client)
        var w = WatchRequest()
        w.roomId = room.roomId
        w.viewerId = "merged"
        // A deadline, so that a flush that never comes fails the test instead of hanging it.
        let viewer = try await client.serverStreaming(MediaService.watch, w, timeout: .seconds(60))
        try await waitFor("the viewer to join") { try await self.stats(client, room).onlineNow == 1 }
        let publisher = try await startPublishing(client, room)
        let sent = (0..<20).map { chunk($0, size: 3000 + $0, keyframe: $0 == 0) }
        try await send(publisher, sent[0])
        var responses = viewer.responses.makeAsyncIterator()
        var got: [MediaChunk] = []
        while got.isEmpty, let m = try await responses.next() {
            if case .chunk(let c)? = m.message { got.append(c) }
        }
        XCTAssertEqual(got.map(\.sequence), [0], "the first chunk arrives with the publisher still on")
        for c in sent.dropFirst() { try await send(publisher, c) }
        _ = try await publisher.finish()
        while let m = try await responses.next() {
            if case .chunk(let c)? = m.message { got.append(c) }
            if case .event(let e)? = m.message, e.kind == .ended { break }
        }
        viewer.cancel()
        XCTAssertEqual(got.map(\.sequence), sent.map(\.sequence))
        XCTAssertEqual(got.map(\.payload), sent.map(\.payload))
        await client.close()
        try await d.stop()
    }

    func testMidStreamJoinStartsAtTheLatestKeyframeAfterTheHeader() async throws {
        let d = try await daemon()
        let client = try await d.connect(.unix)
        let room = try await room(client)
        let publisher = try await startPublishing(client, room)
        try await send(publisher, chunk(0, keyframe: false, header: true))
        for i in 1...12 { try await send(publisher, chunk(i, keyframe: i == 1 || i == 8)) }
        try await waitFor("the room to go live") {
            try await client.unary(RoomService.getRoom, { var r = GetRoomRequest(); r.roomId = room.roomId; return r }()).room!.status == .live
        }
        let late = try await watch(client, room, viewer: "late")
        var it = late.responses.makeAsyncIterator()
        var sequences: [UInt64] = []
        for _ in 0..<6 {
            if case .chunk(let c)? = try await it.next()?.message { sequences.append(c.sequence) }
        }
        XCTAssertEqual(sequences, [0, 8, 9, 10, 11, 12], "header, then the group of pictures from the latest keyframe")
        try await send(publisher, chunk(13))
        if case .chunk(let c)? = try await it.next()?.message { XCTAssertEqual(c.sequence, 13) } else { XCTFail("no live chunk") }
        late.cancel()
        _ = try await publisher.finish()
        await client.close()
        try await d.stop()
    }

    func testTakeoverEndsTheOldPublisherWithAborted() async throws {
        let d = try await daemon()
        let client = try await d.connect(.unix)
        let room = try await room(client)
        let first = try await startPublishing(client, room)
        try await send(first, chunk(0, keyframe: true))
        let second = try await startPublishing(client, room)
        let firstOutcome = try await first.outcome
        XCTAssertEqual(firstOutcome.status.code, .aborted)
        XCTAssertTrue(firstOutcome.status.message.contains("took over"), firstOutcome.status.message)
        try await send(second, chunk(1, keyframe: true))
        let summary = try await second.finish()
        XCTAssertEqual(summary.chunksReceived, 1)
        await client.close()
        try await d.stop()
    }

    func testSilentPublisherIsConsideredGone() async throws {
        let d = try await daemon("publisher_idle_timeout_ms = 400\n")
        let client = try await d.connect(.unix)
        let room = try await room(client)
        let publisher = try await startPublishing(client, room)
        try await send(publisher, chunk(0, keyframe: true))
        let outcome = try await publisher.outcome
        XCTAssertEqual(outcome.status.code, .aborted)
        XCTAssertTrue(outcome.status.message.contains("no media"), outcome.status.message)
        try await waitFor("the room to be not started again") {
            try await client.unary(RoomService.getRoom, { var r = GetRoomRequest(); r.roomId = room.roomId; return r }()).room!.status == .notStarted
        }
        await client.close()
        try await d.stop()
    }

    func testStalledViewerIsDroppedWithoutSlowingOthers() async throws {
        let d = try await daemon("viewer_queue_bytes = 262144\nviewer_max_skips = 1\n")
        let client = try await d.connect(.unix)
        let room = try await room(client)
        // The stalled viewer has its own connection and never reads.
        let stalledClient = try await d.connect(.unix)
        let stalled = try await watch(stalledClient, room, viewer: "stalled")
        let good = try await watch(client, room, viewer: "good")
        try await waitFor("both viewers") { try await self.stats(client, room).onlineNow == 2 }
        let received = NIOLockedValueBox(0)
        let reader = Task {
            for try await m in good.responses {
                if case .chunk(let c)? = m.message { received.withLockedValue { $0 += c.payload.readableBytes } }
            }
        }
        let publisher = try await startPublishing(client, room)
        let total = 120
        for i in 0..<total { try await send(publisher, chunk(i, size: 64 * 1024, keyframe: i % 4 == 0)) }
        try await waitFor("the good viewer to get everything") { received.withLockedValue { $0 } == total * 64 * 1024 }
        let outcome = try await stalled.outcome
        XCTAssertEqual(outcome.status.code, .resourceExhausted)
        XCTAssertTrue(outcome.status.message.contains("too slow"), outcome.status.message)
        _ = try await publisher.finish()
        good.cancel()
        _ = await reader.result
        await stalledClient.close()
        await client.close()
        try await d.stop()
    }

    func testUnknownAndEndedRooms() async throws {
        let d = try await daemon()
        let client = try await d.connect(.unix)
        var w = WatchRequest()
        w.roomId = "rm_nope"
        w.viewerId = "v"
        let missing = try await client.serverStreaming(MediaService.watch, w)
        let m = try await missing.outcome
        XCTAssertEqual(m.status.code, .notFound)
        let room = try await room(client)
        let viewer = try await watch(client, room, viewer: "v1")
        try await waitFor("the viewer to join") { try await self.stats(client, room).onlineNow == 1 }
        _ = try await client.unary(RoomService.closeRoom, { var r = CloseRoomRequest(); r.roomId = room.roomId; return r }())
        var kinds: [StreamEventKind] = []
        for try await r in viewer.responses { if case .event(let e)? = r.message { kinds.append(e.kind) } }
        XCTAssertEqual(kinds, [.closed], "watchers are told the room closed, and the call ends")
        let ended = try await watch(client, room, viewer: "v2")
        let e = try await ended.outcome
        XCTAssertEqual(e.status.code, .failedPrecondition)
        await client.close()
        try await d.stop()
    }

    func testViewerStatisticsAcrossLeaveRejoinAndRestart() async throws {
        let d = try await daemon()
        var client = try await d.connect(.unix)
        let room = try await room(client)
        let a = try await watch(client, room, viewer: "ann", name: "Ann", phone: "111")
        // Two calls opened back to back may join in either order: ann first, for the list below.
        try await waitFor("ann online") { try await self.stats(client, room).onlineNow == 1 }
        let b = try await watch(client, room, viewer: "bob", name: "Bob", phone: "222")
        try await waitFor("two online") { try await self.stats(client, room).onlineNow == 2 }
        a.cancel()
        try await waitFor("ann to leave") { try await self.stats(client, room).onlineNow == 1 }
        let a2 = try await watch(client, room, viewer: "ann", name: "Ann", phone: "111")
        try await waitFor("ann back") { try await self.stats(client, room).onlineNow == 2 }
        a2.cancel()
        try await waitFor("ann gone again") { try await self.stats(client, room).onlineNow == 1 }
        let s = try await stats(client, room)
        XCTAssertEqual(s.distinctViewers, 2, "a viewer who comes back is the same viewer")
        XCTAssertEqual(s.peakConcurrent, 2)
        let list = try await viewers(client, room)
        XCTAssertEqual(list.map(\.viewerId), ["ann", "bob"])
        let ann = list[0]
        XCTAssertEqual(ann.name, "Ann")
        XCTAssertEqual(ann.phone, "111")
        XCTAssertFalse(ann.online)
        XCTAssertEqual(ann.timesLeft, 2)
        XCTAssertGreaterThan(ann.lastLeaveAtMs, ann.firstEntryAtMs)
        XCTAssertTrue(list[1].online)
        _ = b

        // kill -9 while bob watches: after the restart bob is closed out at the last moment known.
        try await Task.sleep(for: .milliseconds(1500))  // let a stats checkpoint happen
        d.signal(SIGKILL)
        try await d.waitForExit()
        await client.close()
        let again = try await DaemonProcess(arguments: ["--config", d.directory.appendingPathComponent("d.conf").path], directory: d.directory)
        client = try await again.connect(.unix)
        let after = try await viewers(client, room)
        XCTAssertEqual(after.map(\.viewerId), ["ann", "bob"])
        XCTAssertEqual(after[0].timesLeft, 2)
        XCTAssertFalse(after[1].online)
        XCTAssertEqual(after[1].timesLeft, 1)
        XCTAssertGreaterThan(after[1].watchMs, 500, "bob's time up to the last checkpoint counts")
        XCTAssertEqual(after[1].lastLeaveAtMs - after[1].firstEntryAtMs, after[1].watchMs, "closed out at the last moment known")
        let s2 = try await stats(client, room)
        XCTAssertEqual(s2.distinctViewers, 2)
        XCTAssertEqual(s2.peakConcurrent, 2)
        XCTAssertEqual(s2.onlineNow, 0)
        await client.close()
        try await again.stop()
    }
}
