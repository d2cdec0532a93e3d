import NIOCore

/// One RTMP message, reassembled from its chunks (or to be split into chunks).
public struct RTMPMessage: Sendable, Equatable {
    /// The chunk stream it travels on. Outbound: control messages use 2, commands 3, replies on a stream 5.
    public var chunkStreamId: UInt32
    public var type: RTMPMessageType
    public var messageStreamId: UInt32
    /// Milliseconds, absolute (deltas already resolved).
    public var timestamp: UInt32
    public var payload: ByteBuffer

    public init(chunkStreamId: UInt32, type: RTMPMessageType, messageStreamId: UInt32 = 0, timestamp: UInt32 = 0,
                payload: ByteBuffer) {
        self.chunkStreamId = chunkStreamId
        self.type = type
        self.messageStreamId = messageStreamId
        self.timestamp = timestamp
        self.payload = payload
    }
}

extension RTMPMessage {
    /// The AMF0 values of a command (an AMF3 command starts with a format byte, then AMF0 as ever).
    public func commandValues() throws -> [AMF0] {
        var p = payload
        if type == .commandAMF3 { p.moveReaderIndex(forwardBy: min(1, p.readableBytes)) }
        return try AMF0.decodeAll(p)
    }
}

/// RTMP message type ids (RTMP 1.0 spec, section 5.4 and 7.1).
public struct RTMPMessageType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let setChunkSize = Self(rawValue: 1)
    public static let abort = Self(rawValue: 2)
    public static let acknowledgement = Self(rawValue: 3)
    public static let userControl = Self(rawValue: 4)
    public static let windowAckSize = Self(rawValue: 5)
    public static let setPeerBandwidth = Self(rawValue: 6)
    public static let audio = Self(rawValue: 8)
    public static let video = Self(rawValue: 9)
    public static let dataAMF3 = Self(rawValue: 15)
    public static let commandAMF3 = Self(rawValue: 17)
    public static let dataAMF0 = Self(rawValue: 18)
    public static let commandAMF0 = Self(rawValue: 20)
    public static let aggregate = Self(rawValue: 22)

    public var description: String { "type \(rawValue)" }
}

/// Builders for the messages a server sends.
public enum RTMPControl {
    static let allocator = ByteBufferAllocator()

    static func uint32(_ type: RTMPMessageType, _ value: UInt32) -> RTMPMessage {
        var b = allocator.buffer(capacity: 4)
        b.writeInteger(value)
        return RTMPMessage(chunkStreamId: 2, type: type, payload: b)
    }

    public static func setChunkSize(_ size: UInt32) -> RTMPMessage { uint32(.setChunkSize, size & 0x7FFF_FFFF) }
    public static func windowAckSize(_ size: UInt32) -> RTMPMessage { uint32(.windowAckSize, size) }
    public static func acknowledgement(_ sequence: UInt32) -> RTMPMessage { uint32(.acknowledgement, sequence) }

    /// Limit type 2 is "dynamic".
    public static func setPeerBandwidth(_ size: UInt32, limitType: UInt8 = 2) -> RTMPMessage {
        var m = uint32(.setPeerBandwidth, size)
        m.payload.writeInteger(limitType)
        return m
    }

    /// User control events: 0 stream begin, 1 stream EOF, 6 ping request, 7 ping response.
    public static func userControl(event: UInt16, _ value: UInt32) -> RTMPMessage {
        var b = allocator.buffer(capacity: 6)
        b.writeInteger(event)
        b.writeInteger(value)
        return RTMPMessage(chunkStreamId: 2, type: .userControl, payload: b)
    }

    /// An AMF0 command (`_result`, `onStatus`, …).
    public static func command(_ values: [AMF0], messageStreamId: UInt32 = 0) -> RTMPMessage {
        RTMPMessage(chunkStreamId: messageStreamId == 0 ? 3 : 5, type: .commandAMF0, messageStreamId: messageStreamId,
                    payload: AMF0.encode(values, allocator: allocator))
    }

    /// `onStatus` on a stream: the answer to publish, success or failure.
    public static func onStatus(level: String, code: String, description: String, messageStreamId: UInt32) -> RTMPMessage {
        command([.string("onStatus"), .number(0), .null,
                 .object([("level", .string(level)), ("code", .string(code)), ("description", .string(description))])],
                messageStreamId: messageStreamId)
    }
}
