// nio-echo serve unix:PATH|tcp:PORT        echoes every byte it reads
// nio-echo bench unix:PATH|tcp:PORT INFLIGHT SECONDS   prints {"callsPerSecond":..,"p50Micros":..,"p99Micros":..}
//
// The floor under tools/bench rpc: 64-byte messages bounced off a bare SwiftNIO echo, with the
// client awaiting each answer the way LiveRoom's client does (a continuation resumed on the
// connection's event loop, NIO as the concurrency executor). No framing, no calls, no protobuf:
// what is left is the sockets, the kernel and the thread wake-ups.
import EchoLoad
import NIOCore
import NIOPosix

final class Echo: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { context.write(data, promise: nil) }
    func channelReadComplete(context: ChannelHandlerContext) { context.flush() }
}

/// Hands each 64-byte answer to the oldest waiting caller. Confined to the channel's event loop.
final class Answers: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    static let size = 64
    var waiting = CircularBuffer<UnsafeContinuation<Void, Never>>()
    var pending = 0
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        pending += Self.unwrapInboundIn(data).readableBytes
        while pending >= Self.size, let next = waiting.popFirst() {
            pending -= Self.size
            next.resume()
        }
    }
}

NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
let args = CommandLine.arguments
let group = MultiThreadedEventLoopGroup.singleton
switch args.count > 2 ? args[1] : "" {
case "serve":
    let bootstrap = ServerBootstrap(group: group).childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Echo()) }
    }
    let listener = args[2].hasPrefix("unix:")
        ? try await bootstrap.bind(unixDomainSocketPath: String(args[2].dropFirst(5)), cleanupExistingSocketFile: true).get()
        : try await bootstrap.bind(host: "127.0.0.1", port: Int(args[2].dropFirst(4))!).get()
    try await listener.closeFuture.get()
case "bench":
    let inflight = Int(args[3])!
    let seconds = Double(args[4])!
    let answers = Answers()
    let bootstrap = ClientBootstrap(group: group).channelInitializer { channel in
        channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(answers) }
    }
    let channel = args[2].hasPrefix("unix:")
        ? try await bootstrap.connect(unixDomainSocketPath: String(args[2].dropFirst(5))).get()
        : try await bootstrap.connect(host: "127.0.0.1", port: Int(args[2].dropFirst(4))!).get()
    let loop = channel.eventLoop
    let message = ByteBuffer(repeating: 7, count: Answers.size)
    @Sendable func send(_ c: UnsafeContinuation<Void, Never>) {
        answers.waiting.append(c)
        channel.writeAndFlush(message, promise: nil)
    }
    try await measureAndPrint(inflight: inflight, seconds: seconds) {
        await withUnsafeContinuation { c in
            if loop.inEventLoop { send(c) } else { loop.execute { send(c) } }
        }
    }
    try await channel.close().get()
default:
    print("usage: nio-echo serve unix:PATH|tcp:PORT | nio-echo bench unix:PATH|tcp:PORT INFLIGHT SECONDS")
    exit(2)
}
