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

extension StreamDataRequest: AttachmentCarrying {
    public static var carriesAttachment: Bool { true }

    public mutating func takeAttachment() -> ByteBuffer? {
        guard case .chunk(var c)? = message, let a = c.takeAttachment() else { return nil }
        message = .chunk(c)
        return a
    }

    public mutating func putAttachment(_ attachment: ByteBuffer) {
        guard case .chunk(var c)? = message else { return }
        c.putAttachment(attachment)
        message = .chunk(c)
    }
}

extension WatchResponse: AttachmentCarrying {
    public static var carriesAttachment: Bool { true }

    public mutating func takeAttachment() -> ByteBuffer? {
        guard case .chunk(var c)? = message, let a = c.takeAttachment() else { return nil }
        message = .chunk(c)
        return a
    }

    public mutating func putAttachment(_ attachment: ByteBuffer) {
        guard case .chunk(var c)? = message else { return }
        c.putAttachment(attachment)
        message = .chunk(c)
    }
}
