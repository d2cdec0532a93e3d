import LiveRoomMessages
import LiveRoomRPC

extension RPCClient {
    /// Opens a StreamData call and sends its `start`; send chunks with `send(chunk:)`, end with `finish()`.
    public func startPublishing(roomId: String, streamKey: String, publisherId: String = "") async throws
        -> StreamingCall<StreamDataRequest, StreamDataResponse>
    {
        let call = try await streaming(MediaService.streamData)
        var start = PublishStart()
        start.roomId = roomId
        start.streamKey = streamKey
        start.publisherId = publisherId
        var first = StreamDataRequest()
        first.message = .start(start)
        try await call.send(first)
        return call
    }
}

extension StreamingCall where Input == StreamDataRequest {
    /// Sends one media chunk on a StreamData call.
    public func send(chunk: MediaChunk) async throws {
        var m = StreamDataRequest()
        m.message = .chunk(chunk)
        try await send(m)
    }
}
