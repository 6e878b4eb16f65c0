/*
 * The HTTP -> Kafka peer of sluice-ingest, as a team would write it with
 * Apache Camel: POST /v1/webhooks/{source} on platform-http (Vert.x) goes
 * to the kafka component with acks=all and the idempotent producer, and
 * 202 is answered only once the producer's callback reports the broker's
 * ack (camel-kafka's producer is asynchronous: the route goes on in that
 * callback, so no thread is parked per request). A send that fails answers
 * 503, as sluice does.
 *
 * Settings come from system properties: peer.port, peer.brokers,
 * peer.topic.
 */
package dev.sluice.bench;

import org.apache.camel.Exchange;
import org.apache.camel.builder.RouteBuilder;
import org.apache.camel.component.kafka.KafkaConstants;
import org.apache.camel.main.Main;

public final class IngestRoute extends RouteBuilder {
	@Override
	public void configure() {
		String brokers = System.getProperty("peer.brokers", "127.0.0.1:9092");
		String topic = System.getProperty("peer.topic", "peer-camel");

		onException(Exception.class)
		    .handled(true)
		    .removeHeaders("*")
		    .setHeader(Exchange.HTTP_RESPONSE_CODE, constant(503))
		    .setHeader("Retry-After", constant("5"))
		    .setBody(constant("{\"error\":\"unavailable\"}"));

		from("platform-http:/v1/webhooks/{source}?httpMethodRestrict=POST")
		    .routeId("webhook-to-kafka")
		    .convertBodyTo(byte[].class)
		    // Keyed by conversation, as sluice-ingest keys its records.
		    .setHeader(KafkaConstants.KEY, jsonpath("$.conversation_id", String.class))
		    .to("kafka:" + topic + "?brokers=" + brokers
			+ "&requestRequiredAcks=all&enableIdempotence=true"
			+ "&lingerMs=1&maxInFlightRequest=5"
			+ "&valueSerializer=org.apache.kafka.common.serialization.ByteArraySerializer")
		    .removeHeaders("*")
		    .setHeader(Exchange.HTTP_RESPONSE_CODE, constant(202))
		    .setHeader(Exchange.CONTENT_TYPE, constant("application/json"))
		    .setBody(constant("{\"status\":\"accepted\"}"));
	}

	public static void main(String[] args) throws Exception {
		Main main = new Main();
		main.configure().addRoutesBuilder(new IngestRoute());
		main.addInitialProperty("camel.server.enabled", "true");
		main.addInitialProperty("camel.server.host", "127.0.0.1");
		main.addInitialProperty("camel.server.port",
					System.getProperty("peer.port", "8080"));
		main.run(args);
	}
}
