import LiveRoomDomain
import LiveRoomMessages
import LiveRoomRPC
import NIOConcurrencyHelpers
import NIOCore

/// Encodes each chunk's WatchResponse once for all its viewers: they all send the same bytes,
/// and the payload travels as an attachment that is shared, never copied.
final class WatchEncoder: Sendable {
    private struct Entry {
        var sequence: UInt64
        var address: UInt
        var length: Int
        var encoded: RPCPayload
    }

    private let recent = NIOLockedValueBox<(entries: [Entry], next: Int)>(([], 0))
    private static let size = 32

    func encode(_ item: ViewerItem) throws -> RPCPayload {
        var r = WatchResponse()
        switch item {
        case .event(let e):
            r.message = .event(e)
            return try MessageCoding.encode(r)
        case .chunk(let c):
            // The cached payload holds the buffer, so its address cannot be reused meanwhile.
            let address = c.payload.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
            let length = c.payload.readableBytes
            // Newest first: viewers mostly ask for the chunk just offered.
            if let hit = recent.withLockedValue({ r -> RPCPayload? in
                let n = r.entries.count
                for k in 0..<n {
                    let e = r.entries[(r.next - 1 - k + 2 * n) % n]
                    if e.sequence == c.sequence && e.address == address && e.length == length { return e.encoded }
                }
                return nil
            }) {
                return hit
            }
            r.message = .chunk(c)
            let encoded = try MessageCoding.encode(r)
            recent.withLockedValue { r in
                let e = Entry(sequence: c.sequence, address: address, length: length, encoded: encoded)
                if r.entries.count < Self.size { r.entries.append(e) } else { r.entries[r.next] = e }
                r.next = (r.next + 1) % Self.size
            }
            return encoded
        }
    }
}

/// Moves one viewer's queue onto its connection from the connection's event loop: woken when
/// the room offers into an empty queue or the peer grants credit, it writes all it may and
/// flushes once. No task per viewer, no hop per chunk.
final class ViewerPump: @unchecked Sendable {
    // Loop-confined: `pending`, `done`. The rest is immutable or locked.
    private let queue: ViewerQueue
    private let push: PushWriter
    private let encoder: WatchEncoder
    private var pending: RPCPayload?
    private var pendingEndsStream = false
    private var done = false
    private let scheduled = NIOLockedValueBox(false)
    private let completion = NIOLockedValueBox<(result: Result<Void, Error>?, waiter: CheckedContinuation<Void, Error>?)>((nil, nil))

    init(queue: ViewerQueue, push: PushWriter, encoder: WatchEncoder) {
        self.queue = queue
        self.push = push
        self.encoder = encoder
    }

    /// Starts pumping and waits until the stream ends (normally, dropped, or the call ended).
    func run() async throws {
        let push = self.push
        push.eventLoop.execute {
            push.onCredit { [self] in self.drain() }
        }
        queue.onReady { [self] in self.schedule() }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
                let ready = completion.withLockedValue { s -> Result<Void, Error>? in
                    if let r = s.result { return r }
                    s.waiter = c
                    return nil
                }
                if let ready { c.resume(with: ready) }
            }
        } onCancel: {
            self.complete(.failure(CancellationError()))
        }
    }

    /// From any thread: drain soon on the event loop, once however often it is called.
    private func schedule() {
        let first = scheduled.withLockedValue { s -> Bool in
            defer { s = true }
            return !s
        }
        if first { push.eventLoop.execute { self.drain() } }
    }

    private func drain() {
        scheduled.withLockedValue { $0 = false }
        guard !done else { return }
        var wrote = false
        defer { if wrote { push.flush() } }
        while true {
            let payload: RPCPayload
            let endsStream: Bool
            if let p = pending {
                payload = p
                endsStream = pendingEndsStream
                pending = nil
            } else {
                switch queue.poll() {
                case .empty:
                    return
                case .finished(let error):
                    complete(error.map { .failure(RPCStatus($0)) } ?? .success(()))
                    return
                case .item(let item):
                    do { payload = try encoder.encode(item) } catch {
                        complete(.failure(error))
                        return
                    }
                    if case .event(let e) = item, e.kind == .closed { endsStream = true } else { endsStream = false }
                }
            }
            switch push.write(payload) {
            case .written:
                wrote = true
                if endsStream {
                    complete(.success(()))
                    return
                }
            case .noCredit:
                pending = payload
                pendingEndsStream = endsStream
                return
            case .ended:
                complete(.failure(RPCStatus(.cancelled, "the call has ended")))
                return
            case .tooLarge:
                complete(.failure(RPCStatus(.resourceExhausted, "a media chunk exceeds the maximum frame size")))
                return
            }
        }
    }

    private func complete(_ result: Result<Void, Error>) {
        let waiter = completion.withLockedValue { s -> CheckedContinuation<Void, Error>? in
            guard s.result == nil else { return nil }
            s.result = result
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume(with: result)
        queue.stopNotifying()
        push.eventLoop.execute { [self] in
            done = true
            push.onCredit(nil)
        }
    }
}
