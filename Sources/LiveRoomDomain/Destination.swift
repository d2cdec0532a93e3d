import LiveRoomMessages

/// A room's output, as stored: a linked room on another platform, or a plain RTMP destination.
public struct DestinationRecord: Sendable, Equatable {
    public var id: String
    public var roomId: String
    /// The linked room, whose platform ingest is published to; "" for a plain RTMP destination.
    public var targetRoomId: String
    /// Plain RTMP destinations: the push server and key (a secret, encrypted at rest).
    public var url: String
    public var streamKey: String
    public var createdAtMs: Int64

    public init(id: String, roomId: String, targetRoomId: String, url: String, streamKey: String, createdAtMs: Int64) {
        self.id = id
        self.roomId = roomId
        self.targetRoomId = targetRoomId
        self.url = url
        self.streamKey = streamKey
        self.createdAtMs = createdAtMs
    }

    /// The id of a relay room's own platform, implied by the room (never stored).
    public static let platformId = "platform"
}

/// Where destinations are kept.
public protocol DestinationStore: Sendable {
    /// Stores a destination. A room links a target room at most once: a second link of the same
    /// target is ALREADY_EXISTS, unless `ignoringDuplicate` (a simulcast create retried).
    func insertDestination(_ destination: DestinationRecord, ignoringDuplicate: Bool) async throws
    /// False if there was no such destination.
    func deleteDestination(roomId: String, id: String) async throws -> Bool
    func destinations(roomId: String) async throws -> [DestinationRecord]
}

/// How a destination is doing right now (kept in memory; a restart begins at idle).
public struct DestinationStatus: Sendable, Equatable {
    public var state: DestinationState = .idle
    public var lastError = ""
    public var nextAttemptAtMs: Int64 = 0
    public var bytesSent: UInt64 = 0
    public var reconnects: UInt64 = 0
    public var liveSinceMs: Int64 = 0
    /// Bytes per second over the last completed window.
    public var bitrateBps: Int64 = 0
    private var connections: UInt64 = 0
    private var windowStartMs: Int64 = 0
    private var windowBytes: Int64 = 0
    static let windowMs: Int64 = 2000

    public init() {}

    public mutating func connecting() {
        state = .connecting
        if connections > 0 { reconnects += 1 }
        connections += 1
        nextAttemptAtMs = 0
    }

    public mutating func live(nowMs: Int64) {
        state = .live
        liveSinceMs = nowMs
        lastError = ""
        windowStartMs = nowMs
        windowBytes = 0
    }

    public mutating func sent(_ bytes: Int, nowMs: Int64) {
        bytesSent += UInt64(bytes)
        windowBytes += Int64(bytes)
        let elapsed = nowMs - windowStartMs
        if elapsed >= Self.windowMs {
            bitrateBps = windowBytes * 8 * 1000 / max(1, elapsed)
            windowStartMs = nowMs
            windowBytes = 0
        }
    }

    /// The source stopped: nothing to send until it is live again.
    public mutating func idle() {
        state = .idle
        liveSinceMs = 0
        bitrateBps = 0
        nextAttemptAtMs = 0
    }

    /// A failure worth retrying at `retryAtMs`.
    public mutating func retrying(_ error: String, retryAtMs: Int64) {
        state = .retrying
        lastError = error
        nextAttemptAtMs = retryAtMs
        liveSinceMs = 0
        bitrateBps = 0
    }

    /// The destination said no (wrong key, unknown app): tried again only when the source next goes live.
    public mutating func failed(_ error: String) {
        state = .failed
        lastError = error
        nextAttemptAtMs = 0
        liveSinceMs = 0
        bitrateBps = 0
    }
}

/// Capped exponential backoff with jitter: a destination that keeps failing is tried less and
/// less often, and many destinations failing at once do not retry in step.
public struct Backoff: Sendable, Equatable {
    public var baseMs: Int64
    public var capMs: Int64
    public private(set) var failures = 0

    public init(baseMs: Int64 = 1000, capMs: Int64 = 30_000) {
        self.baseMs = baseMs
        self.capMs = capMs
    }

    /// The wait before the next attempt: between half and all of min(cap, base * 2^failures).
    public mutating func next<R: RandomNumberGenerator>(using rng: inout R) -> Int64 {
        let ceiling = min(capMs, baseMs << min(failures, 20))
        failures += 1
        return ceiling / 2 + Int64.random(in: 0...(ceiling - ceiling / 2), using: &rng)
    }

    public mutating func next() -> Int64 {
        var rng = SystemRandomNumberGenerator()
        return next(using: &rng)
    }

    public mutating func reset() { failures = 0 }
}
