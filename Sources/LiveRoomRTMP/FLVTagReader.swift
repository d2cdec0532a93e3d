import NIOCore

/// One FLV tag: audio (8), video (9) or script data (18), its timestamp and its body.
public struct FLVTag: Sendable, Equatable {
    public var type: UInt8
    /// Milliseconds (the 24-bit field and its extension byte).
    public var timestamp: UInt32
    public var data: ByteBuffer

    public init(type: UInt8, timestamp: UInt32, data: ByteBuffer) {
        self.type = type
        self.timestamp = timestamp
        self.data = data
    }

    public static let audio: UInt8 = 8
    public static let video: UInt8 = 9
    public static let script: UInt8 = 18
}

/// Reads FLV tags out of a byte stream cut anywhere (a room's media chunks may split or bundle
/// tags). An FLV file header may appear again mid-stream: a new publisher began, and the tags
/// after it start a new timeline. Memory is bounded by one tag (FLV sizes are 24-bit).
public struct FLVTagReader: Sendable {
    /// What `next()` found.
    public enum Item: Sendable, Equatable {
        /// An FLV file header: what follows is a new stream.
        case streamStart
        case tag(FLVTag)
    }

    private var buffer = ByteBuffer()

    public init() {}

    /// Bytes held for a tag not yet complete.
    public var pendingBytes: Int { buffer.readableBytes }

    public mutating func feed(_ bytes: ByteBuffer) {
        var b = bytes
        if buffer.readableBytes == 0 {
            buffer = b
        } else {
            buffer.writeBuffer(&b)
        }
    }

    /// The next header or tag, nil when more bytes are needed. Throws when the bytes are not FLV.
    public mutating func next() throws -> Item? {
        guard buffer.readableBytes >= 3 else { return nil }
        let start = buffer.readerIndex
        if buffer.getBytes(at: start, length: 3) == [0x46, 0x4C, 0x56] {  // "FLV"
            guard buffer.readableBytes >= 9 else { return nil }
            let offset = Int(buffer.getInteger(at: start + 5, as: UInt32.self)!)
            guard offset >= 9, offset <= 1024 else {
                throw RTMPError.protocolViolation("FLV header announces a data offset of \(offset) bytes")
            }
            guard buffer.readableBytes >= offset + 4 else { return nil }
            buffer.moveReaderIndex(forwardBy: offset + 4)  // the header and the first previous-tag-size
            compact()
            return .streamStart
        }
        guard buffer.readableBytes >= 11 else { return nil }
        let type = buffer.getInteger(at: start, as: UInt8.self)! & 0x1F  // bit 5 marks filtered (encrypted) tags
        guard type == FLVTag.audio || type == FLVTag.video || type == FLVTag.script else {
            throw RTMPError.protocolViolation("not FLV: tag type \(type) (only audio 8, video 9 and script 18 exist)")
        }
        var header = buffer.getSlice(at: start + 1, length: 7)!
        let size = Int(header.readUInt24()!)
        let low = header.readUInt24()!
        let high = header.readInteger(as: UInt8.self)!
        guard buffer.readableBytes >= 11 + size + 4 else { return nil }
        let data = buffer.getSlice(at: start + 11, length: size)!
        buffer.moveReaderIndex(forwardBy: 11 + size + 4)
        compact()
        return .tag(FLVTag(type: type, timestamp: low | UInt32(high) << 24, data: data))
    }

    /// Lets go of consumed bytes once nothing is pending, so a long stream holds no history.
    private mutating func compact() {
        if buffer.readableBytes == 0 { buffer = ByteBuffer() }
    }
}
