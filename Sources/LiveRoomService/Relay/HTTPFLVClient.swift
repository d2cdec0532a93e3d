import LiveRoomRTMP
import NIOCore
import NIOHTTP1
import NIOPosix

/// Pulls an HTTP-FLV live stream (`GET http://HOST[:PORT]/PATH`, an FLV body that never ends),
/// as Chinese platforms' web players do, and hands out its tags. Plain HTTP only.
enum HTTPFLVClient {
    typealias Connection = NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>

    struct Target: Equatable {
        var host: String
        var port: Int
        var path: String
    }

    static func parse(_ url: String) throws -> Target {
        guard url.hasPrefix("http://") else {
            throw RTMPClientError.refused("\(url): only http:// HTTP-FLV URLs can be pulled (https needs TLS, which this build has not)")
        }
        let rest = url.dropFirst("http://".count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        let path = rest[slash...].isEmpty ? "/" : String(rest[slash...])
        var host = String(authority)
        var port = 80
        if let colon = authority.lastIndex(of: ":"), !authority.hasPrefix("[") {
            guard let p = Int(authority[authority.index(after: colon)...]), (1...65535).contains(p) else {
                throw RTMPClientError.refused("\(url): bad port")
            }
            host = String(authority[..<colon])
            port = p
        }
        guard !host.isEmpty else { throw RTMPClientError.refused("\(url) has no host") }
        return Target(host: host, port: port, path: path)
    }

    /// Reads the stream until the server ends it (returns) or the connection fails (throws
    /// `RTMPClientError`). A server that is not sending FLV is a refusal.
    static func pull(_ url: String, configuration: RTMPClient.Configuration,
                     onTag: (FLVTag) async throws -> Void) async throws {
        let target = try parse(url)
        let connection: Connection
        do {
            connection = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(configuration.connectTimeout)
                .connect(host: target.host, port: target.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let sync = channel.pipeline.syncOperations
                        try sync.addHandler(IdleStateHandler(readTimeout: configuration.readTimeout))
                        try sync.addHandler(CloseOnIdleHandler())
                        try sync.addHTTPClientHandlers()
                        return try Connection(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw RTMPClientError.failed("cannot connect to \(target.host):\(target.port): \(error)")
        }
        let channel = connection.channel
        do {
            try await withTaskCancellationHandler {
                try await connection.executeThenClose { inbound, outbound in
                    var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: target.path)
                    head.headers.add(name: "host", value: target.port == 80 ? target.host : "\(target.host):\(target.port)")
                    head.headers.add(name: "user-agent", value: "liveroomd")
                    head.headers.add(name: "accept", value: "video/x-flv, */*")
                    try await outbound.write(.head(head))
                    try await outbound.write(.end(nil))
                    var reader = FLVTagReader()
                    for try await part in inbound {
                        switch part {
                        case .head(let response):
                            guard response.status == .ok else {
                                throw RTMPClientError.refused("\(url) answered \(response.status.code) \(response.status.reasonPhrase)")
                            }
                        case .body(let bytes):
                            reader.feed(bytes)
                            do {
                                while let item = try reader.next() {
                                    if case .tag(let tag) = item { try await onTag(tag) }
                                }
                            } catch let e as RTMPError {
                                throw RTMPClientError.refused("\(url) is not sending FLV: \(e.description)")
                            }
                        case .end:
                            return
                        }
                    }
                }
            } onCancel: {
                channel.close(promise: nil)
            }
        } catch let e as RTMPClientError {
            throw e
        } catch {
            if Task.isCancelled { return }
            throw RTMPClientError.failed("\(url): \(error)")
        }
    }
}
