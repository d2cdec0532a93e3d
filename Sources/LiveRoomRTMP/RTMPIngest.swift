import LiveRoomMessages

/// Where RTMP publishers' media goes. The RTMP server knows no rooms: the daemon implements
/// this over its rooms, checking the stream key exactly as StreamData does.
public protocol RTMPIngest: Sendable {
    /// Starts a publication for `streamName` (the stream key) under `app`. Throws
    /// `RTMPRefusal` to refuse it. `onEnd` is called at most once if the publication is ended
    /// from the other side (a newer publisher took over, the room closed, silence).
    func startPublishing(app: String, streamName: String, publisherId: String,
                         onEnd: @escaping @Sendable (String) -> Void) async throws -> any RTMPPublication
}

/// One publisher's turn, as handed out by an `RTMPIngest`.
public protocol RTMPPublication: Sendable {
    func send(_ chunk: MediaChunk) async throws
    /// The publisher stopped (unpublished, disconnected, or broke the protocol).
    func finish(reason: String) async
}

/// A refused publish: the RTMP status code and a description the broadcaster sees.
public struct RTMPRefusal: Error, Sendable, CustomStringConvertible {
    /// e.g. `NetStream.Publish.Unauthorized`, `NetStream.Publish.BadName`.
    public var code: String
    public var description: String
    public init(code: String, _ description: String) {
        self.code = code
        self.description = description
    }
}
