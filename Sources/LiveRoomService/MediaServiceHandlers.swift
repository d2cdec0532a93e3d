import LiveRoomDomain
import LiveRoomMessages
import LiveRoomRPC

/// `liveroom.v1.MediaService`: publishing checks the stream key before any media is accepted.
public enum MediaServiceHandlers {
    public static func register(_ registry: RoomRegistry, in services: inout ServiceRegistry) {
        services.clientStreaming(MediaService.streamData) { requests, context in
            try await domain {
                var it = requests.makeAsyncIterator()
                guard let first = try await it.next(), case .start(let start)? = first.message else {
                    throw RoomError(.invalidArgument, "the first StreamData message must be `start` with room_id and stream_key")
                }
                let room = try await registry.room(start.roomId)
                try await room.authorizePublish(key: start.streamKey)
                var summary = StreamDataResponse()
                summary.startedAtMs = registry.now
                do {
                    while let next = try await it.next() {
                        guard case .chunk(let chunk)? = next.message else {
                            throw RoomError(.invalidArgument, "only `chunk` messages may follow `start`")
                        }
                        if summary.chunksReceived == 0 { try await room.setStatus(.live, reason: "media arriving") }
                        summary.chunksReceived += 1
                        summary.bytesReceived += UInt64(chunk.payload.readableBytes)
                    }
                } catch {
                    if summary.chunksReceived > 0 { try? await room.setStatus(.notStarted, reason: "publisher gone") }
                    throw error
                }
                if summary.chunksReceived > 0 { try await room.setStatus(.notStarted, reason: "publisher ended") }
                summary.endedAtMs = registry.now
                context.logger.info("publish ended", metadata: ["room": "\(start.roomId)", "chunks": "\(summary.chunksReceived)"])
                return summary
            }
        }
    }
}

/// `liveroom.testing.v1.TestControl`, only with --enable-test-service.
enum TestControlHandlers {
    static func register(_ clock: AdjustableClock, in services: inout ServiceRegistry) {
        services.unary(TestControl.advanceClock) { request, _ in
            var r = AdvanceClockResponse()
            r.nowMs = clock.advance(byMs: request.byMs)
            return r
        }
    }
}
