import LiveRoomMessages
import Logging
import NIOCore

/// One RTMP connection's conversation after the handshake: the NetConnection and NetStream
/// commands a publisher sends, and its media. No sockets here: messages in, messages out, so
/// it is tested directly.
struct RTMPSession {
    /// What the connection should do next.
    enum Next: Equatable { case carryOn, close }

    let ingest: any RTMPIngest
    /// The application name publishers must use (`live` in `rtmp://HOST:PORT/live/KEY`).
    let app: String
    let peer: String
    let logger: Logger
    /// Called when the room ends the publication (takeover, room closed, silence).
    let onEnd: @Sendable (String) -> Void
    /// Sends a message to the peer.
    let send: @Sendable (RTMPMessage) async throws -> Void
    /// Passes the peer's acknowledgement window to the acknowledger.
    let setPeerWindow: @Sendable (UInt32) -> Void

    static let serverWindow: UInt32 = 2_500_000
    static let serverChunkSize: UInt32 = 4096

    private(set) var connected = false
    private(set) var publication: (any RTMPPublication)?
    private var muxer = FLVMuxer()
    private var bundler = TagBundler()
    private var nextStreamId: UInt32 = 1

    init(ingest: any RTMPIngest, app: String, peer: String, logger: Logger, onEnd: @escaping @Sendable (String) -> Void,
         send: @escaping @Sendable (RTMPMessage) async throws -> Void, setPeerWindow: @escaping @Sendable (UInt32) -> Void) {
        self.ingest = ingest
        self.app = app
        self.peer = peer
        self.logger = logger
        self.onEnd = onEnd
        self.send = send
        self.setPeerWindow = setPeerWindow
    }

    mutating func handle(_ message: RTMPMessage) async throws -> Next {
        switch message.type {
        case .commandAMF0, .commandAMF3:
            let values: [AMF0]
            do { values = try message.commandValues() } catch {
                throw RTMPError.protocolViolation("RTMP command is not valid AMF0: \(error)")
            }
            return try await command(values, streamId: message.messageStreamId)
        case .userControl:
            var p = message.payload
            if let event = p.readInteger(as: UInt16.self), event == 6, let stamp = p.readInteger(as: UInt32.self) {
                try await send(RTMPControl.userControl(event: 7, stamp))  // ping response
            }
        case .windowAckSize:
            if let size = message.payload.getInteger(at: message.payload.readerIndex, as: UInt32.self), size > 0 {
                setPeerWindow(size)
            }
        case .audio, .video, .dataAMF0, .dataAMF3:
            try await media(message)
        case .aggregate:
            for part in try Self.split(aggregate: message) { try await media(part) }
        default:
            break  // chunk size and abort were applied by the decoder; acknowledgements need nothing
        }
        return .carryOn
    }

    /// The publisher is gone (disconnected or broke the protocol).
    mutating func end(reason: String) async {
        if let p = publication {
            publication = nil
            for c in bundler.flush() { try? await p.send(c) }
            await p.finish(reason: reason)
        }
    }

    private mutating func command(_ values: [AMF0], streamId: UInt32) async throws -> Next {
        guard let name = values.first?.stringValue else {
            throw RTMPError.protocolViolation("RTMP command without a name")
        }
        let txn = values.count > 1 ? values[1].numberValue ?? 0 : 0
        switch name {
        case "connect":
            let requested = Self.appName(values.count > 2 ? values[2]["app"]?.stringValue ?? "" : "")
            guard requested == app else {
                try await send(RTMPControl.command([
                    .string("_error"), .number(txn), .null,
                    .object([("level", .string("error")), ("code", .string("NetConnection.Connect.Rejected")),
                             ("description", .string("unknown application \"\(requested)\": publish to rtmp://HOST:PORT/\(app)/STREAM_KEY"))]),
                ]))
                return .close
            }
            connected = true
            try await send(RTMPControl.windowAckSize(Self.serverWindow))
            try await send(RTMPControl.setPeerBandwidth(Self.serverWindow))
            try await send(RTMPControl.setChunkSize(Self.serverChunkSize))
            try await send(RTMPControl.command([
                .string("_result"), .number(txn),
                .object([("fmsVer", .string("FMS/3,0,1,123")), ("capabilities", .number(31))]),
                .object([("level", .string("status")), ("code", .string("NetConnection.Connect.Success")),
                         ("description", .string("Connection succeeded.")), ("objectEncoding", .number(0))]),
            ]))
        case "createStream":
            try requireConnected(name)
            let id = nextStreamId
            nextStreamId += 1
            try await send(RTMPControl.command([.string("_result"), .number(txn), .null, .number(Double(id))]))
        case "releaseStream", "FCPublish", "getStreamLength":
            if txn != 0 { try await send(RTMPControl.command([.string("_result"), .number(txn), .null, .undefined])) }
        case "publish":
            try requireConnected(name)
            return try await publish(values, streamId: streamId)
        case "FCUnpublish", "deleteStream", "closeStream":
            await end(reason: "publisher unpublished")
        case "play", "play2":
            try await send(RTMPControl.onStatus(level: "error", code: "NetStream.Play.Failed",
                description: "this server takes publishers only; watch rooms with Watch (liveroomctl watch)", messageStreamId: streamId))
            return .close
        default:
            break  // e.g. _checkbw, onBWDone answers: nothing to do
        }
        return .carryOn
    }

    private mutating func publish(_ values: [AMF0], streamId: UInt32) async throws -> Next {
        guard publication == nil else {
            try await send(RTMPControl.onStatus(level: "error", code: "NetStream.Publish.BadName",
                description: "this connection is already publishing", messageStreamId: streamId))
            return .close
        }
        let raw = values.count > 3 ? values[3].stringValue ?? "" : ""
        // Encoders may append "?query" to the stream name; the key is what comes before.
        let key = String(raw.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? "")
        do {
            let p = try await ingest.startPublishing(app: app, streamName: key, publisherId: "rtmp:\(peer)", onEnd: onEnd)
            publication = p
            logger.info("RTMP publisher started")
            muxer = FLVMuxer()
            bundler = TagBundler()
            try await send(RTMPControl.userControl(event: 0, streamId))  // stream begin
            try await send(RTMPControl.onStatus(level: "status", code: "NetStream.Publish.Start",
                                                description: "publishing", messageStreamId: streamId))
            try await p.send(muxer.fileHeader())
            return .carryOn
        } catch let refusal as RTMPRefusal {
            logger.notice("RTMP publish refused", metadata: ["reason": "\(refusal.description)"])
            try await send(RTMPControl.onStatus(level: "error", code: refusal.code, description: refusal.description,
                                                messageStreamId: streamId))
            return .close
        }
    }

    private mutating func media(_ message: RTMPMessage) async throws {
        guard let p = publication, let tag = muxer.tag(for: message) else { return }
        for chunk in bundler.add(tag) { try await p.send(chunk) }
    }

    private func requireConnected(_ command: String) throws {
        guard connected else { throw RTMPError.protocolViolation("RTMP \(command) before connect") }
    }

    /// `live`, `live/`, `live?x=y` all name the application `live`.
    static func appName(_ s: String) -> String {
        let noQuery = s.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        return String(noQuery).trimmingCharacters(in: "/")
    }

    /// An aggregate message holds FLV-like tags: type, size, timestamp, stream id, data, back pointer.
    static func split(aggregate message: RTMPMessage) throws -> [RTMPMessage] {
        var b = message.payload
        var parts: [RTMPMessage] = []
        var base: UInt32?
        while b.readableBytes > 0 {
            guard let type = b.readInteger(as: UInt8.self), let size = b.readUInt24(), let ts = b.readUInt24(),
                let tsHigh = b.readInteger(as: UInt8.self), b.readUInt24() != nil,
                let data = b.readSlice(length: Int(size)), b.readInteger(as: UInt32.self) != nil
            else { throw RTMPError.protocolViolation("RTMP aggregate message is truncated") }
            let stamp = ts | UInt32(tsHigh) << 24
            let first = base ?? stamp
            base = first
            parts.append(RTMPMessage(chunkStreamId: message.chunkStreamId, type: RTMPMessageType(rawValue: type),
                                     messageStreamId: message.messageStreamId,
                                     timestamp: message.timestamp &+ (stamp &- first), payload: data))
        }
        return parts
    }
}

extension String {
    func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.first == set { s = s.dropFirst() }
        while s.last == set { s = s.dropLast() }
        return String(s)
    }
}
