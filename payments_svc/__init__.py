"""The PaymentService: a payment gateway that verifies authsvc access tokens offline."""
