import LiveRoomMessages
import NIOCore

/// Turns a publisher's RTMP audio, video and metadata messages into an FLV byte stream, one
/// media chunk per FLV tag. The FLV header, the metadata and the codec sequence headers are
/// marked as header chunks: the room replays them to every viewer who joins later, so any
/// viewer's stream plays from its first byte. Video keyframes are marked from the tag.
public struct FLVMuxer: Sendable {
    private var sequence: UInt64 = 0
    private var sawVideo = false
    private let allocator = ByteBufferAllocator()

    public init() {}

    /// The 9-byte FLV file header and the first (zero) previous-tag-size.
    public mutating func fileHeader() -> MediaChunk {
        var b = allocator.buffer(capacity: 13)
        b.writeBytes([0x46, 0x4C, 0x56, 0x01, 0x05, 0, 0, 0, 9])  // "FLV", version 1, audio+video, header size
        b.writeInteger(UInt32(0))
        return chunk(b, timestamp: 0, keyframe: false, header: true)
    }

    /// The FLV tag for an RTMP media or data message; nil for messages that are not media.
    public mutating func tag(for message: RTMPMessage) -> MediaChunk? {
        var payload = message.payload
        var header = false
        var keyframe = false
        let tagType: UInt8
        switch message.type {
        case .video:
            guard let b0 = payload.getInteger(at: payload.readerIndex, as: UInt8.self) else { return nil }
            tagType = 9
            sawVideo = true
            let frameType = (b0 >> 4) & 0x07
            let packetType = payload.getInteger(at: payload.readerIndex + 1, as: UInt8.self) ?? 1
            if b0 & 0x80 != 0 {
                // Enhanced RTMP (HEVC, AV1, VP9 by FourCC): packet type 0 is the sequence start.
                header = (b0 & 0x0F) == 0
            } else {
                let codec = b0 & 0x0F
                header = (codec == 7 || codec == 12) && packetType == 0  // AVC or HEVC configuration
            }
            keyframe = !header && frameType == 1
        case .audio:
            guard let b0 = payload.getInteger(at: payload.readerIndex, as: UInt8.self) else { return nil }
            tagType = 8
            let packetType = payload.getInteger(at: payload.readerIndex + 1, as: UInt8.self) ?? 1
            header = (b0 >> 4) == 10 && packetType == 0  // AAC AudioSpecificConfig
            // An audio-only stream has no keyframes of its own: any audio frame is a start.
            keyframe = !header && !sawVideo
        case .dataAMF0, .dataAMF3:
            if message.type == .dataAMF3 {
                guard payload.readInteger(as: UInt8.self) != nil else { return nil }
            }
            var probe = payload
            guard let first = try? AMF0.decode(&probe), let name = first.stringValue else { return nil }
            if name == "@setDataFrame" { payload = probe }
            var inner = payload
            let event = (try? AMF0.decode(&inner))?.stringValue ?? name
            tagType = 18
            header = event == "onMetaData"
        default:
            return nil
        }
        let size = payload.readableBytes
        guard size <= 0xFF_FFFF else { return nil }
        var b = allocator.buffer(capacity: 11 + size + 4)
        b.writeInteger(tagType)
        b.writeUInt24(UInt32(size))
        b.writeUInt24(message.timestamp & 0xFF_FFFF)
        b.writeInteger(UInt8(message.timestamp >> 24))
        b.writeUInt24(0)
        b.writeBuffer(&payload)
        b.writeInteger(UInt32(11 + size))
        return chunk(b, timestamp: header ? 0 : message.timestamp, keyframe: keyframe, header: header)
    }

    private mutating func chunk(_ payload: ByteBuffer, timestamp: UInt32, keyframe: Bool, header: Bool) -> MediaChunk {
        sequence += 1
        var c = MediaChunk()
        c.sequence = sequence
        c.timestampMs = Int64(timestamp)
        c.keyframe = keyframe
        c.header = header
        c.payload = payload
        return c
    }
}

/// Bundles the audio (and script) tags that arrive between video frames with the video tag
/// that follows them, so a stream makes one media chunk per video frame instead of one per
/// tag: each chunk costs every viewer a frame and a write, and audio comes in small, frequent
/// tags. Header tags pass alone, after whatever was waiting. An audio-only stream passes tag
/// by tag. Audio waits at most one video frame interval.
public struct TagBundler: Sendable {
    public static let maxPendingBytes = 64 * 1024
    public static let maxPendingTags = 32

    private var pending: [MediaChunk] = []
    private var pendingBytes = 0
    private var sawVideo = false

    public init() {}

    /// What to send after `tag` (zero or more chunks, in order).
    public mutating func add(_ tag: MediaChunk) -> [MediaChunk] {
        if tag.header { return flush() + [tag] }
        let isVideo = tag.payload.getInteger(at: tag.payload.readerIndex, as: UInt8.self) == 9
        if isVideo {
            sawVideo = true
            if pending.isEmpty { return [tag] }
            pending.append(tag)
            return [bundle(keyframe: tag.keyframe)]
        }
        guard sawVideo else { return [tag] }
        pending.append(tag)
        pendingBytes += tag.payload.readableBytes
        if pendingBytes > Self.maxPendingBytes || pending.count > Self.maxPendingTags { return flush() }
        return []
    }

    /// Whatever is waiting, as one chunk (the publisher stopped, or too much is waiting).
    public mutating func flush() -> [MediaChunk] {
        pending.isEmpty ? [] : [bundle(keyframe: false)]
    }

    private mutating func bundle(keyframe: Bool) -> MediaChunk {
        var b = ByteBufferAllocator().buffer(capacity: pending.reduce(0) { $0 + $1.payload.readableBytes })
        for var t in pending { b.writeBuffer(&t.payload) }
        var c = MediaChunk()
        c.sequence = pending.last!.sequence
        c.timestampMs = pending.first!.timestampMs
        c.keyframe = keyframe
        c.payload = b
        pending = []
        pendingBytes = 0
        return c
    }
}
