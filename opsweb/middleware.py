from opsweb.views import healthz


class HealthCheckMiddleware:
    """Answer /healthz before host validation and the HTTPS redirect.

    A load balancer's health check speaks plain HTTP with ``Host: <target ip>:<port>``, which is
    in no ALLOWED_HOSTS list; the page reveals nothing but whether the database answers.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path == "/healthz":
            return healthz(request)
        return self.get_response(request)
