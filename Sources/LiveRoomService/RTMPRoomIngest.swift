import LiveRoomDomain
import LiveRoomMessages
import LiveRoomRTMP

/// RTMP publishers into rooms on the built-in platform and relay rooms of external platforms. The stream key in the publish URL
/// finds the room and is checked exactly as StreamData checks it; the same takeover rule and
/// idle timeout apply.
struct RTMPRoomIngest: RTMPIngest {
    let registry: RoomRegistry

    func startPublishing(app: String, streamName key: String, publisherId: String,
                         onEnd: @escaping @Sendable (String) -> Void) async throws -> any RTMPPublication {
        guard !key.isEmpty else {
            throw RTMPRefusal(code: "NetStream.Publish.BadName", "the publish URL has no stream key: use the room's push server followed by /STREAM_KEY")
        }
        do {
            guard let room = try await registry.room(forStreamKey: key) else {
                throw RTMPRefusal(code: "NetStream.Publish.Unauthorized",
                                  "wrong stream key \(StreamKey.redacted(key)): no room has it (was it rotated?); get the current key with GetRoom")
            }
            let session = try await room.beginPublish(key: key, publisherId: publisherId)
            let watchdog = room.supervise(session) { reason in onEnd(reason.message) }
            return RoomPublication(room: room, session: session, watchdog: watchdog)
        } catch let e as RoomError {
            throw RTMPRefusal(code: e.code == .permissionDenied ? "NetStream.Publish.Unauthorized" : "NetStream.Publish.Rejected", e.message)
        }
    }
}

/// One RTMP publisher's turn at a room.
final class RoomPublication: RTMPPublication {
    let room: RoomActor
    let session: PublishSession
    let watchdog: Task<Void, Never>

    init(room: RoomActor, session: PublishSession, watchdog: Task<Void, Never>) {
        self.room = room
        self.session = session
        self.watchdog = watchdog
    }

    func send(_ chunk: MediaChunk) async throws {
        try await room.publish(chunk, session: session)
    }

    func finish(reason: String) async {
        watchdog.cancel()
        await room.endPublish(session, reason: reason)
    }
}
