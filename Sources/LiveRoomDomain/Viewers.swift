import LiveRoomMessages

/// One of our own viewers, across all the times they watched a room.
public struct ViewerRecord: Sendable, Equatable {
    public var viewerId: String
    public var name: String
    public var phone: String
    public var online: Bool
    public var firstEntryMs: Int64
    public var lastLeaveMs: Int64
    public var timesLeft: Int64
    /// Watch time of finished sessions.
    public var watchMs: Int64
    /// Start of the current session (when online).
    public var sessionStartedMs: Int64
    /// Last moment the viewer was known to be watching: a crash closes the session here.
    public var lastSeenMs: Int64

    public init(viewerId: String, name: String, phone: String, online: Bool, firstEntryMs: Int64, lastLeaveMs: Int64,
                timesLeft: Int64, watchMs: Int64, sessionStartedMs: Int64, lastSeenMs: Int64) {
        self.viewerId = viewerId
        self.name = name
        self.phone = phone
        self.online = online
        self.firstEntryMs = firstEntryMs
        self.lastLeaveMs = lastLeaveMs
        self.timesLeft = timesLeft
        self.watchMs = watchMs
        self.sessionStartedMs = sessionStartedMs
        self.lastSeenMs = lastSeenMs
    }

    /// Total watch time including the session in progress.
    public func totalWatchMs(nowMs: Int64) -> Int64 {
        watchMs + (online ? max(0, nowMs - sessionStartedMs) : 0)
    }

    public func message(nowMs: Int64) -> Viewer {
        var v = Viewer()
        v.viewerId = viewerId
        v.name = name
        v.phone = phone
        v.online = online
        v.firstEntryAtMs = firstEntryMs
        v.lastLeaveAtMs = lastLeaveMs
        v.timesLeft = timesLeft
        v.watchMs = totalWatchMs(nowMs: nowMs)
        return v
    }
}

/// Where viewer statistics are kept.
public protocol ViewerStore: Sendable {
    func saveViewers(roomId: String, peakConcurrent: Int64, _ viewers: [ViewerRecord]) async throws
    /// Marks every viewer online in the room as seen at `atMs` (the crash close-out point).
    func touchOnlineViewers(roomId: String, atMs: Int64) async throws
    func loadViewers(roomId: String) async throws -> (peakConcurrent: Int64, viewers: [ViewerRecord])
    /// After a crash: ends every session still marked online at its last known moment.
    func closeOutOnlineViewers() async throws -> Int
}

/// A publisher's turn at a room. Ended by a newer publisher (takeover), the room closing,
/// or the publisher itself.
public final class PublishSession: Sendable {
    public let publisherId: String
    /// Yields once if the room ends this session (takeover, close).
    public let ended: AsyncStream<RoomError>
    private let continuation: AsyncStream<RoomError>.Continuation

    init(publisherId: String) {
        self.publisherId = publisherId
        (ended, continuation) = AsyncStream<RoomError>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    func end(_ reason: RoomError) {
        continuation.yield(reason)
        continuation.finish()
    }
}
