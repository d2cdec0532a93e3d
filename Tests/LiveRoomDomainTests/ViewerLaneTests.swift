import LiveRoomMessages
import NIOCore
import Synchronization
import XCTest

@testable import LiveRoomDomain

/// A lane that holds work until the test runs it, as an event loop that is busy would.
final class HeldLane: ViewerLane {
    private let held = Mutex<[@Sendable () -> Void]>([])
    func run(_ work: @escaping @Sendable () -> Void) { held.withLock { $0.append(work) } }
    func runHeld() {
        let work = held.withLock { w in defer { w = [] }; return w }
        for w in work { w() }
    }
    var pending: Int { held.withLock { $0.count } }
}

final class ViewerLaneTests: XCTestCase {
    private func drainAll(_ queue: ViewerQueue) -> (items: [ViewerItem], finished: Bool) {
        var items: [ViewerItem] = []
        while true {
            switch queue.poll() {
            case .item(let i): items.append(i)
            case .empty: return (items, false)
            case .finished: return (items, true)
            }
        }
    }

    private func chunk(_ n: UInt64, keyframe: Bool = false) -> MediaChunk {
        var c = MediaChunk()
        c.sequence = n
        c.keyframe = keyframe
        c.payload = ByteBuffer(repeating: UInt8(n), count: 1000)
        return c
    }

    func testEachLaneFeedsItsOwnViewersInOrderWithItsOwnCopyAndTheCloseComesLast() async throws {
        let registry = RoomRegistry(store: MemoryStore(), platforms: [], connectors: [:], builtin: BuiltinEndpoints(),
                                    clock: AdjustableClock())
        let record = try await registry.create(RoomRegistryTests.request("self")).room
        let room = try await registry.room(record.id)
        let laneA = HeldLane(), laneB = HeldLane()
        let a1 = try await room.join(viewerId: "a1", name: "", phone: "", lane: laneA).queue
        let a2 = try await room.join(viewerId: "a2", name: "", phone: "", lane: laneA).queue
        let b1 = try await room.join(viewerId: "b1", name: "", phone: "", lane: laneB).queue

        let session = try await room.beginPublish(key: record.streamKey, publisherId: "p")
        let sent = [chunk(0, keyframe: true), chunk(1), chunk(2)]
        for c in sent { try await room.publish(c, session: session) }
        XCTAssertEqual(laneA.pending, 4, "one hand-over per lane per item (started + 3 chunks), not one per viewer")
        XCTAssertEqual(drainAll(a1).items.count, 0, "nothing reaches a viewer until its lane runs")

        laneA.runHeld()
        let gotA1 = drainAll(a1).items, gotA2 = drainAll(a2).items
        XCTAssertEqual(drainAll(b1).items.count, 0, "lane B has not run yet")
        laneB.runHeld()
        let gotB1 = drainAll(b1).items
        for got in [gotA1, gotA2, gotB1] {
            let chunks: [MediaChunk] = got.compactMap { if case .chunk(let c) = $0 { return c } else { return nil } }
            XCTAssertEqual(chunks.map(\.sequence), [0, 1, 2])
            XCTAssertEqual(chunks.map(\.payload), sent.map(\.payload), "byte-identical")
            if case .event(let e)? = got.first { XCTAssertEqual(e.kind, StreamEventKind.started) } else { XCTFail("started first") }
        }
        func address(_ items: [ViewerItem]) -> UInt? {
            guard case .chunk(let c)? = items.dropFirst().first else { return nil }
            return c.payload.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
        }
        XCTAssertEqual(address(gotA1), address(gotA2), "viewers on one lane share one buffer")
        XCTAssertNotEqual(address(gotA1), address(gotB1), "each lane has its own copy")

        // Closing: the closed event and the end reach the viewer in that order, through its lane.
        try await room.publish(chunk(3), session: session)
        _ = try await room.close()
        laneA.runHeld()
        let tail = drainAll(a1)
        XCTAssertTrue(tail.finished)
        let kinds = tail.items.map { item -> String in
            switch item {
            case .chunk(let c): return "chunk \(c.sequence)"
            case .event(let e): return "\(e.kind)"
            }
        }
        XCTAssertEqual(kinds.first, "chunk 3")
        XCTAssertTrue(kinds.contains("\(StreamEventKind.closed)"), "told the room closed before the queue ends: \(kinds)")
    }

    func testARoomWaitsForALaneThatFallsBehindInsteadOfQueueingWithoutBound() async throws {
        let registry = RoomRegistry(store: MemoryStore(), platforms: [], connectors: [:], builtin: BuiltinEndpoints(),
                                    clock: AdjustableClock())
        let record = try await registry.create(RoomRegistryTests.request("self")).room
        let room = try await registry.room(record.id)
        let lane = HeldLane()
        let queue = try await room.join(viewerId: "v", name: "", phone: "", lane: lane).queue
        let session = try await room.beginPublish(key: record.streamKey, publisherId: "p")
        let total = LaneBacklog.limit * 3
        final class Count: Sendable { let value = Mutex(0) }
        let published = Count()
        let chunks = (0..<total).map { chunk(UInt64($0), keyframe: $0 == 0) }
        let publisher = Task {
            for c in chunks {
                try await room.publish(c, session: session)
                published.value.withLock { $0 += 1 }
            }
        }
        try await Task.sleep(for: .milliseconds(200))
        XCTAssertLessThanOrEqual(published.value.withLock { $0 }, LaneBacklog.limit + 1, "the publisher waits for the lane")
        XCTAssertLessThanOrEqual(lane.pending, LaneBacklog.limit + 2, "the lane's backlog stays bounded")
        var received = 0
        while published.value.withLock({ $0 }) < total {
            lane.runHeld()
            received += drainAll(queue).items.count
            try await Task.sleep(for: .milliseconds(5))
        }
        try await publisher.value
        lane.runHeld()
        received += drainAll(queue).items.count
        XCTAssertEqual(received, total + 1, "every chunk and the started event, none lost")
    }
}
