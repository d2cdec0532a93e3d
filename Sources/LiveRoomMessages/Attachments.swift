import NIOCore

extension MediaChunk: AttachmentCarrying {
    public static var carriesAttachment: Bool { true }

    public mutating func takeAttachment() -> ByteBuffer? {
        guard payload.readableBytes > 0 else { return nil }
        defer { payload = ByteBuffer() }
        return payload
    }

    public mutating func putAttachment(_ attachment: ByteBuffer) { payload = attachment }
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

    public mutating func putAttachment(_ attachment: ByteBuffer) {
        guard var c = chunk else { return }
        c.putAttachment(attachment)
        chunk = c
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
