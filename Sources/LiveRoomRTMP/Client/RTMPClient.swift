import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Where an RTMP client connects: `rtmp://HOST[:PORT]/APP`, the "server URL" platforms hand out.
public struct RTMPURL: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int
    /// The path after the host, without the leading slash (`live`, `live2/abc`).
    public var app: String

    public init(host: String, port: Int = 1935, app: String) {
        self.host = host
        self.port = port
        self.app = app
    }

    /// Parses a push server URL. Throws `RTMPURLError` with what is wrong.
    public init(_ text: String) throws {
        guard text.hasPrefix("rtmp://") else {
            throw RTMPURLError("\"\(text)\" is not an rtmp:// URL (rtmps and rtmpe are not supported)")
        }
        let rest = text.dropFirst("rtmp://".count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        let path = rest[slash...].drop { $0 == "/" }
        let app = path.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        var host = String(authority)
        var port = 1935
        if authority.hasPrefix("[") {  // [IPv6]:port
            guard let close = authority.firstIndex(of: "]") else { throw RTMPURLError("\"\(text)\": unclosed [ in the host") }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") {
                guard let p = Int(after.dropFirst()), (1...65535).contains(p) else { throw RTMPURLError("\"\(text)\": bad port") }
                port = p
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            guard let p = Int(authority[authority.index(after: colon)...]), (1...65535).contains(p) else {
                throw RTMPURLError("\"\(text)\": the port must be a number from 1 to 65535")
            }
            port = p
        }
        guard !host.isEmpty, !host.contains(where: { $0 == "@" || $0 == " " }) else { throw RTMPURLError("\"\(text)\" has no host") }
        guard !app.trimmingCharacters(in: "/").isEmpty else {
            throw RTMPURLError("\"\(text)\" has no application path (rtmp://HOST:PORT/APP, e.g. /live)")
        }
        self.host = host
        self.port = port
        self.app = app.trimmingCharacters(in: "/")
    }

    /// Splits a play URL `rtmp://HOST:PORT/APP/STREAM` into the server and the stream name.
    public static func splitPlay(_ text: String) throws -> (server: RTMPURL, stream: String) {
        let url = try RTMPURL(text)
        guard let cut = url.app.lastIndex(of: "/") else {
            throw RTMPURLError("\"\(text)\" names no stream: rtmp://HOST:PORT/APP/STREAM")
        }
        let stream = String(url.app[url.app.index(after: cut)...])
        return (RTMPURL(host: url.host, port: url.port, app: String(url.app[..<cut])), stream)
    }

    /// The `tcUrl` sent in `connect`.
    public var description: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return "rtmp://\(h):\(port)/\(app)"
    }
}

/// A malformed RTMP URL.
public struct RTMPURLError: Error, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// How an RTMP client connection ended, as a platform would explain it.
public enum RTMPClientError: Error, Equatable, CustomStringConvertible {
    /// The server said no: wrong key, unknown application, stream not found. Retrying the
    /// same request will not help.
    case refused(String)
    /// The connection failed (unreachable, closed, broke the protocol). Worth retrying.
    case failed(String)

    public var description: String {
        switch self {
        case .refused(let s), .failed(let s): return s
        }
    }
}

/// A minimal RTMP client: publishes a stream to a server (relaying to a platform) or plays one
/// (pulling a platform's live). Media passes through unchanged.
public enum RTMPClient {
    public struct Configuration: Sendable {
        public var connectTimeout: TimeAmount = .seconds(5)
        /// How long a command (connect, createStream, publish, play) may wait for its answer.
        public var commandTimeout: TimeAmount = .seconds(10)
        /// A played stream that sends nothing this long is dropped.
        public var readTimeout: TimeAmount = .seconds(30)
        public var limits = RTMPLimits()
        public var chunkSize: UInt32 = 4096
        public init() {}
    }

    typealias Connection = NIOAsyncChannel<RTMPMessage, RTMPMessage>

    /// Publishes to `server` under `streamKey`, then runs `body` with a publisher to send tags
    /// through. When `body` returns the stream is unpublished (FCUnpublish, deleteStream) and
    /// the connection closed. Throws `RTMPClientError`.
    public static func publish<T: Sendable>(
        to server: RTMPURL, streamKey: String, configuration: Configuration = Configuration(),
        group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        _ body: @escaping @Sendable (RTMPPublisher) async throws -> T
    ) async throws -> T {
        let (connection, handshake) = try await connect(server, configuration, group, readTimeout: nil)
        return try await run(connection) { inbound, outbound in
            var conversation = Conversation(outbound: outbound, channel: connection.channel, timeout: configuration.commandTimeout)
            var it = inbound.makeAsyncIterator()
            try await handshake.get()
            try await conversation.connect(server, chunkSize: configuration.chunkSize, &it)
            try await conversation.call("releaseStream", [.null, .string(streamKey)], expectAnswer: false, &it)
            try await conversation.call("FCPublish", [.null, .string(streamKey)], expectAnswer: false, &it)
            let streamId = try await conversation.createStream(&it)
            try await conversation.send(RTMPClientMessages.command(
                ["publish", 0, .null, .string(streamKey), .string("live")], streamId: streamId))
            try await conversation.awaitStatus("NetStream.Publish.Start", refusal: "publish", streamKey: streamKey, &it)
            let publisher = RTMPPublisher(outbound: outbound, streamId: streamId, channel: connection.channel,
                                          chunkSize: Int(configuration.chunkSize))
            return try await withThrowingTaskGroup(of: T?.self) { group in
                group.addTask {
                    defer { connection.channel.close(promise: nil) }
                    let result = try await body(publisher)
                    try? await outbound.write(RTMPClientMessages.command(["FCUnpublish", 0, .null, .string(streamKey)], streamId: 0))
                    try? await outbound.write(RTMPClientMessages.command(["deleteStream", 0, .null, .number(Double(streamId))], streamId: 0))
                    return result
                }
                // This side answers pings and notices a server that drops or refuses us later.
                var ended: Error = RTMPClientError.failed("the server closed the connection")
                do {
                    while let message = try await it.next() {
                        if let status = conversation.control(message), status.isError {
                            ended = RTMPClientError.refused("the server stopped the stream: \(status)")
                            break
                        }
                    }
                } catch {
                    ended = RTMPClientError.failed("the connection failed: \(error)")
                }
                // The body finished (and closed the connection), or it must stop now.
                connection.channel.close(promise: nil)
                if let first = try await group.next(), let result = first { return result }
                throw ended
            }
        }
    }

    /// Plays `stream` from `server` and hands each audio, video and data message to `onMessage`
    /// until the server ends the stream (returns) or the connection fails (throws).
    public static func play(
        from server: RTMPURL, stream: String, configuration: Configuration = Configuration(),
        group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        onMessage: (RTMPMessage) async throws -> Void
    ) async throws {
        let (connection, handshake) = try await connect(server, configuration, group, readTimeout: configuration.readTimeout)
        try await run(connection) { inbound, outbound in
            var conversation = Conversation(outbound: outbound, channel: connection.channel, timeout: configuration.commandTimeout)
            var it = inbound.makeAsyncIterator()
            try await handshake.get()
            try await conversation.connect(server, chunkSize: configuration.chunkSize, &it)
            let streamId = try await conversation.createStream(&it)
            // Ask for a generous buffer, as players do; servers pace live streams anyway.
            try await conversation.send(RTMPControl.userControlBufferLength(streamId: streamId, ms: 3000))
            try await conversation.send(RTMPClientMessages.command(["play", 0, .null, .string(stream), .number(-1000)], streamId: streamId))
            var media = false
            do {
                while let message = try await it.next() {
                    switch message.type {
                    case .audio, .video, .dataAMF0, .dataAMF3:
                        media = true
                        try await onMessage(message)
                    case .aggregate:
                        media = true
                        for part in try RTMPSession.split(aggregate: message) { try await onMessage(part) }
                    default:
                        if let status = conversation.control(message) {
                            if status.isError { throw RTMPClientError.refused("the server refused to play \(stream): \(status)") }
                            if status.code == "NetStream.Play.Stop" || status.code == "NetStream.Play.UnpublishNotify" { return }
                        }
                    }
                }
            } catch let e as RTMPClientError {
                throw e
            } catch {
                if Task.isCancelled { return }
                throw RTMPClientError.failed("the connection failed: \(error)")
            }
            // nginx-rtmp hangs up on its players when the publisher leaves: the end of a stream.
            if Task.isCancelled || media { return }
            throw RTMPClientError.failed("the server closed the connection before sending any media")
        }
    }

    private static func connect(_ server: RTMPURL, _ configuration: Configuration, _ group: EventLoopGroup,
                                readTimeout: TimeAmount?) async throws -> (Connection, EventLoopFuture<Void>) {
        do {
            return try await ClientBootstrap(group: group)
                .connectTimeout(configuration.connectTimeout)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connect(host: server.host, port: server.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let done = channel.eventLoop.makePromise(of: Void.self)
                        let sync = channel.pipeline.syncOperations
                        if let readTimeout {
                            try sync.addHandler(IdleStateHandler(readTimeout: readTimeout))
                            try sync.addHandler(CloseOnIdleHandler())
                        }
                        try sync.addHandler(RTMPAcknowledger())
                        try sync.addHandler(RTMPClientHandshakeHandler(done: done))
                        try sync.addHandler(ByteToMessageHandler(RTMPChunkDecoder(limits: configuration.limits)))
                        try sync.addHandler(MessageToByteHandler(RTMPChunkEncoder()))
                        return (try Connection(wrappingChannelSynchronously: channel), done.futureResult)
                    }
                }
        } catch {
            throw RTMPClientError.failed("cannot connect to \(server.host):\(server.port): \(error)")
        }
    }

    /// Runs `body` on the connection and closes it after, turning NIO's errors into client errors.
    private static func run<T: Sendable>(
        _ connection: Connection,
        _ body: (NIOAsyncChannelInboundStream<RTMPMessage>, NIOAsyncChannelOutboundWriter<RTMPMessage>) async throws -> T
    ) async throws -> T {
        let channel = connection.channel
        do {
            return try await withTaskCancellationHandler {
                try await connection.executeThenClose { inbound, outbound in try await body(inbound, outbound) }
            } onCancel: {
                channel.close(promise: nil)
            }
        } catch let e as RTMPClientError {
            throw e
        } catch let e as RTMPError {
            throw RTMPClientError.failed(e.description)
        } catch {
            throw RTMPClientError.failed("the connection failed: \(error)")
        }
    }
}

/// Sends FLV tags as RTMP messages on a published stream.
public struct RTMPPublisher: Sendable {
    let outbound: NIOAsyncChannelOutboundWriter<RTMPMessage>
    /// The published stream's message stream id.
    public let streamId: UInt32
    /// The connection, for senders that write from its event loop (see `RTMPTagWriter`).
    public let channel: Channel
    /// The chunk size this side announced.
    public let chunkSize: Int

    /// Sends one tag; waits while the connection cannot take more (a slow server).
    public func send(_ tag: FLVTag) async throws {
        try await outbound.write(RTMPClientMessages.media(tag, streamId: streamId))
    }

}

/// The `onStatus` a server sent.
struct RTMPStatus: CustomStringConvertible {
    var level: String
    var code: String
    var text: String

    init?(_ message: RTMPMessage) {
        guard message.type == .commandAMF0 || message.type == .commandAMF3, let values = try? message.commandValues(),
            values.first?.stringValue == "onStatus", let info = values.dropFirst(3).first
        else { return nil }
        level = info["level"]?.stringValue ?? ""
        code = info["code"]?.stringValue ?? ""
        text = info["description"]?.stringValue ?? ""
    }

    var isError: Bool { level == "error" }
    var description: String { text.isEmpty ? code : "\(code) (\(text))" }
}

/// The command phase of a client connection: requests, and waiting for their answers while
/// answering the server's control messages.
struct Conversation {
    let outbound: NIOAsyncChannelOutboundWriter<RTMPMessage>
    let channel: Channel
    let timeout: TimeAmount
    private var transaction: Double = 1

    init(outbound: NIOAsyncChannelOutboundWriter<RTMPMessage>, channel: Channel, timeout: TimeAmount) {
        self.outbound = outbound
        self.channel = channel
        self.timeout = timeout
    }

    func send(_ message: RTMPMessage) async throws { try await outbound.write(message) }

    mutating func connect(_ server: RTMPURL, chunkSize: UInt32, _ it: inout NIOAsyncChannelInboundStream<RTMPMessage>.AsyncIterator) async throws {
        try await send(RTMPControl.setChunkSize(chunkSize))
        let answer = try await call("connect", [.object([
            ("app", .string(server.app)), ("type", .string("nonprivate")), ("flashVer", .string("FMLE/3.0 (compatible; LiveRoom)")),
            ("tcUrl", .string(server.description)),
        ])], expectAnswer: true, &it)
        if case .refused(let why) = answer { throw RTMPClientError.refused("the server refused to connect to application \"\(server.app)\": \(why)") }
    }

    mutating func createStream(_ it: inout NIOAsyncChannelInboundStream<RTMPMessage>.AsyncIterator) async throws -> UInt32 {
        switch try await call("createStream", [.null], expectAnswer: true, &it) {
        case .result(let values):
            guard let id = values.dropFirst(3).first?.numberValue, id >= 0, id < 1_000_000 else {
                throw RTMPClientError.failed("the server answered createStream without a stream id")
            }
            return UInt32(id)
        case .refused(let why):
            throw RTMPClientError.refused("the server refused createStream: \(why)")
        case .none:
            throw RTMPClientError.failed("the server did not answer createStream")
        }
    }

    enum Answer { case result([AMF0]), refused(String), none }

    /// Sends a command on stream 0; with `expectAnswer`, waits for its `_result` or `_error`.
    @discardableResult
    mutating func call(_ name: String, _ args: [AMF0], expectAnswer: Bool,
                       _ it: inout NIOAsyncChannelInboundStream<RTMPMessage>.AsyncIterator) async throws -> Answer {
        let txn = transaction
        transaction += 1
        try await send(RTMPClientMessages.command([.string(name), .number(txn)] + args, streamId: 0))
        guard expectAnswer else { return .none }
        return try await within(name) {
            while let message = try await it.next() {
                if message.type == .commandAMF0 || message.type == .commandAMF3, let values = try? message.commandValues(),
                    let kind = values.first?.stringValue, kind == "_result" || kind == "_error",
                    values.count > 1, values[1].numberValue == txn
                {
                    if kind == "_result" { return .result(values) }
                    let info = values.dropFirst(3).first
                    return .refused([info?["code"]?.stringValue, info?["description"]?.stringValue].compactMap { $0 }.joined(separator: ": "))
                }
                if let status = control(message), status.isError {
                    throw RTMPClientError.refused("the server refused \(name): \(status)")
                }
            }
            throw RTMPClientError.failed("the server closed the connection in answer to \(name)")
        }
    }

    /// Waits for `onStatus` with `code`; an error status, or the server hanging up instead, is a refusal.
    func awaitStatus(_ code: String, refusal: String, streamKey: String,
                     _ it: inout NIOAsyncChannelInboundStream<RTMPMessage>.AsyncIterator) async throws {
        try await within(refusal) {
            while let message = try await it.next() {
                guard let status = control(message) else { continue }
                if status.isError { throw RTMPClientError.refused("the server refused to \(refusal): \(status)") }
                if status.code == code { return }
            }
            // nginx-rtmp answers a key its on_publish hook refuses by hanging up.
            throw RTMPClientError.refused("the server closed the connection when asked to \(refusal) (it refused the stream key, or the name is taken)")
        }
    }

    /// Runs `body`, giving up after the command timeout by closing the connection.
    private func within<R>(_ what: String, _ body: () async throws -> R) async throws -> R {
        let channel = self.channel
        let timedOut = NIOLockedValueBox(false)
        let timer = channel.eventLoop.scheduleTask(in: timeout) {
            timedOut.withLockedValue { $0 = true }
            channel.close(promise: nil)
        }
        defer { timer.cancel() }
        do {
            return try await body()
        } catch {
            // Our own close after the timeout, not the server's answer.
            if timedOut.withLockedValue({ $0 }) {
                throw RTMPClientError.failed("no answer to \(what) within \(timeout.nanoseconds / 1_000_000) ms")
            }
            throw error
        }
    }

    /// Answers what the server sends outside of commands; returns an `onStatus` if it was one.
    func control(_ message: RTMPMessage) -> RTMPStatus? {
        switch message.type {
        case .userControl:
            var p = message.payload
            if let event = p.readInteger(as: UInt16.self), event == 6, let stamp = p.readInteger(as: UInt32.self) {
                channel.writeAndFlush(RTMPControl.userControl(event: 7, stamp), promise: nil)
            }
        case .windowAckSize:
            if let size = message.payload.getInteger(at: message.payload.readerIndex, as: UInt32.self), size > 0 {
                channel.triggerUserOutboundEvent(RTMPAcknowledger.PeerWindow(size: size), promise: nil)
            }
        case .commandAMF0, .commandAMF3:
            return RTMPStatus(message)
        default:
            break
        }
        return nil
    }
}

/// Builders for what a client sends.
public enum RTMPClientMessages {
    static let allocator = ByteBufferAllocator()

    /// Commands on stream 0 go on chunk stream 3, commands on a media stream on 8 (as librtmp does).
    static func command(_ values: [AMF0], streamId: UInt32) -> RTMPMessage {
        RTMPMessage(chunkStreamId: streamId == 0 ? 3 : 8, type: .commandAMF0, messageStreamId: streamId,
                    payload: AMF0.encode(values, allocator: allocator))
    }

    /// An FLV tag as the RTMP message that carries it; metadata becomes `@setDataFrame`.
    public static func media(_ tag: FLVTag, streamId: UInt32) -> RTMPMessage {
        switch tag.type {
        case FLVTag.audio:
            return RTMPMessage(chunkStreamId: 4, type: .audio, messageStreamId: streamId, timestamp: tag.timestamp, payload: tag.data)
        case FLVTag.video:
            return RTMPMessage(chunkStreamId: 6, type: .video, messageStreamId: streamId, timestamp: tag.timestamp, payload: tag.data)
        default:
            var payload = tag.data
            var probe = payload
            if (try? AMF0.decode(&probe))?.stringValue == "onMetaData" {
                var b = allocator.buffer(capacity: payload.readableBytes + 16)
                AMF0.string("@setDataFrame").encode(into: &b)
                b.writeBuffer(&payload)
                payload = b
            }
            return RTMPMessage(chunkStreamId: 5, type: .dataAMF0, messageStreamId: streamId, timestamp: tag.timestamp, payload: payload)
        }
    }
}

extension RTMPControl {
    /// User control event 3: the client's buffer length for a stream.
    static func userControlBufferLength(streamId: UInt32, ms: UInt32) -> RTMPMessage {
        var m = userControl(event: 3, streamId)
        m.payload.writeInteger(ms)
        return m
    }
}

extension AMF0: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .number(Double(value)) }
}

extension RTMPClient {
    /// Reads bytes as a client reads a server's: the handshake answer, then chunks, commands,
    /// statuses and media as FLV tags. Returns how many messages it understood. For the fuzzer:
    /// whatever the bytes, this must neither crash nor hold more than the limits allow.
    package static func readServerBytes(_ bytes: ByteBuffer, limits: RTMPLimits) -> Int {
        var b = bytes
        guard b.readInteger(as: UInt8.self) == 3, b.readSlice(length: 2 * RTMPHandshakeHandler.signatureSize) != nil else { return 0 }
        var decoder = RTMPChunkDecoder(limits: limits)
        var muxer = FLVMuxer()
        var reader = FLVTagReader()
        var understood = 0
        while let next = try? decoder.next(&b) {
            guard let message = next else { continue }
            if RTMPStatus(message) != nil { understood += 1 }
            if let values = try? message.commandValues(), values.first?.stringValue == "_result" { understood += 1 }
            let parts = message.type == .aggregate ? (try? RTMPSession.split(aggregate: message)) ?? [] : [message]
            for part in parts {
                guard let tag = muxer.tag(for: part) else { continue }
                reader.feed(tag.payload)
                while let item = try? reader.next() {
                    if case .tag(let t) = item { _ = RTMPClientMessages.media(t, streamId: 1); understood += 1 }
                }
            }
        }
        return understood
    }
}
