import NIOCore

extension MediaChunk: AttachmentCarrying {
    public static var carriesAttachment: Bool { true }

    public mutating func takeAttachment() -> ByteBuffer? {
        guard payload.readableBytes > 0 else { return nil }
        defer { payload = ByteBuffer() }
        return payload
    }

    public mutating func putAttachment(_ attachment: ByteBuffer) -> String? {
        guard payload.readableBytes == 0 else { return "the chunk carries its payload both inline and as an attachment" }
        payload = attachment
        return nil
    }
}

/// A message whose oneof may hold a media chunk; the chunk's payload is its attachment.
protocol ChunkMessage: AttachmentCarrying {
    var chunk: MediaChunk? { get set }
}

extension ChunkMessage {
    public mutating func takeAttachment() -> ByteBuffer? {
        guard var c = chunk, let a = c.takeAttachment() else { return nil }
        chunk = c
        return a
    }

    public mutating func putAttachment(_ attachment: ByteBuffer) -> String? {
        guard var c = chunk else { return "an attachment came with a message that holds no media chunk" }
        if let problem = c.putAttachment(attachment) { return problem }
        chunk = c
        return nil
    }
}

extension StreamDataRequest: ChunkMessage {
    public static var carriesAttachment: Bool { true }

    var chunk: MediaChunk? {
        get { if case .chunk(let c)? = message { c } else { nil } }
        set { if let newValue { message = .chunk(newValue) } }
    }
}

extension WatchResponse: ChunkMessage {
    public static var carriesAttachment: Bool { true }

    var chunk: MediaChunk? {
        get { if case .chunk(let c)? = message { c } else { nil } }
        set { if let newValue { message = .chunk(newValue) } }
    }
}
